//! The terminal UI, used when stdin and stdout are both a terminal: a
//! scrolling message pane, a status line (connection state, unread count,
//! file progress) and an input line with editing and history
//! ([`super::editor`]). ratatui draws it and crossterm reads the keys; lines
//! arriving while you type go to the pane, never into the line being typed.
//! Events come from the engine through [`TuiFrontend`]; each line typed goes
//! to the engine as one input line.

use std::collections::VecDeque;
use std::io::Stdout;
use std::path::Path;

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyEventKind};
use crossterm::event::{KeyModifiers, MouseEventKind};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout, Position};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use tokio::sync::mpsc;
use unicode_width::UnicodeWidthChar;

use super::editor::LineEditor;
use super::events::{Event, Frontend, TerminalFrontend};

/// Lines the pane keeps (older ones scroll away for good).
pub const PANE_LINES: usize = 10_000;
const PROMPT: &str = "> ";

/// How a pane line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A message from someone.
    Message,
    /// What became of what we sent, answers, help.
    Info,
    /// Something failed.
    Error,
    /// Loud: a key changed, content refused.
    Alarm,
}

/// What the engine tells the UI.
enum UiMsg {
    Line(Kind, String),
    State(String),
    Progress(Option<String>),
}

/// The engine's side: events become pane lines and status changes.
pub struct TuiFrontend {
    tx: mpsc::UnboundedSender<UiMsg>,
    text: TerminalFrontend,
}

fn kind_of(event: &Event) -> Kind {
    match event {
        Event::Dm { .. } | Event::GroupMsg { .. } | Event::File { .. } => Kind::Message,
        Event::Error { .. } | Event::Disconnected { .. } | Event::Dropped { .. } => Kind::Error,
        Event::KeyChanged { .. } | Event::NotSent { .. } | Event::GroupKeyRefused { .. } => {
            Kind::Alarm
        }
        _ => Kind::Info,
    }
}

impl Frontend for TuiFrontend {
    fn emit(&mut self, event: &Event) {
        let state = match event {
            Event::Connected { server, .. } => Some(format!("connected to {server}")),
            Event::Disconnected { .. } => Some("disconnected".to_owned()),
            Event::Reconnecting { attempt, .. } => {
                Some(format!("reconnecting (attempt {attempt})"))
            }
            _ => None,
        };
        if let Some(s) = state {
            let _ = self.tx.send(UiMsg::State(s));
        }
        if let Event::Progress {
            direction,
            name,
            done,
            total,
        } = event
        {
            let shown = (done < total).then(|| {
                let pct = *done as f64 * 100.0 / (*total).max(1) as f64;
                format!(
                    "{direction} {} {pct:.0}% of {total} bytes",
                    super::display::escape(name)
                )
            });
            let _ = self.tx.send(UiMsg::Progress(shown));
            return;
        }
        if matches!(event, Event::Error { .. } | Event::Disconnected { .. }) {
            let _ = self.tx.send(UiMsg::Progress(None));
        }
        let Some(text) = self.text.render(event) else {
            return;
        };
        let kind = kind_of(event);
        let mut first = true;
        for line in text.lines() {
            let line = if first {
                format!("{} {line}", super::terminal::clock())
            } else {
                format!("         {line}")
            };
            first = false;
            let _ = self.tx.send(UiMsg::Line(kind, line));
        }
    }
}

/// What the UI shows and keeps.
struct Screen {
    user: String,
    lines: VecDeque<(Kind, String)>,
    /// Rows scrolled back from the bottom (0: following new lines).
    scroll: usize,
    /// Lines that arrived while scrolled back.
    unread: usize,
    state: String,
    progress: Option<String>,
    editor: LineEditor,
    /// Rows the pane had at the last draw (for page scrolling).
    pane_rows: usize,
}

impl Screen {
    fn apply(&mut self, msg: UiMsg) {
        match msg {
            UiMsg::Line(kind, text) => {
                self.lines.push_back((kind, text));
                if self.lines.len() > PANE_LINES {
                    self.lines.pop_front();
                }
                if self.scroll > 0 {
                    self.unread += 1;
                    self.scroll += 1;
                }
            }
            UiMsg::State(s) => self.state = s,
            UiMsg::Progress(p) => self.progress = p,
        }
    }

    fn scroll_by(&mut self, rows: isize) {
        let max = self.lines.len();
        self.scroll = (self.scroll as isize + rows).clamp(0, max as isize) as usize;
        if self.scroll == 0 {
            self.unread = 0;
        }
    }

    /// A key; returns a line to send when one is complete.
    fn key(&mut self, k: KeyEvent) -> Option<String> {
        if k.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let e = &mut self.editor;
        match k.code {
            KeyCode::Enter => return Some(e.submit()),
            KeyCode::Char('c') if ctrl => return Some("/quit".into()),
            KeyCode::Char('d') if ctrl && e.text().is_empty() => return Some("/quit".into()),
            KeyCode::Char('d') if ctrl => e.delete(),
            KeyCode::Char('a') if ctrl => e.home(),
            KeyCode::Char('e') if ctrl => e.end(),
            KeyCode::Char('b') if ctrl => e.left(),
            KeyCode::Char('f') if ctrl => e.right(),
            KeyCode::Char('u') if ctrl => e.kill_to_start(),
            KeyCode::Char('k') if ctrl => e.kill_to_end(),
            KeyCode::Char('w') if ctrl => e.kill_word(),
            KeyCode::Char('p') if ctrl => e.up(),
            KeyCode::Char('n') if ctrl => e.down(),
            KeyCode::Char(_) if ctrl => {}
            KeyCode::Char(c) => e.insert(c),
            KeyCode::Backspace => e.backspace(),
            KeyCode::Delete => e.delete(),
            KeyCode::Left => e.left(),
            KeyCode::Right => e.right(),
            KeyCode::Home => e.home(),
            KeyCode::End => e.end(),
            KeyCode::Up => e.up(),
            KeyCode::Down => e.down(),
            KeyCode::PageUp => self.scroll_by(self.pane_rows.max(2) as isize - 1),
            KeyCode::PageDown => {
                self.scroll_by(-(self.pane_rows.max(2) as isize - 1));
                // Lines that came in while scrolled back pushed the view up:
                // a page down that ends less than half a page from the
                // bottom follows new lines again, so it shows them.
                if self.scroll < self.pane_rows / 2 {
                    self.scroll_by(-(self.scroll as isize));
                }
            }
            _ => {}
        }
        None
    }

    fn draw(&mut self, f: &mut ratatui::Frame) {
        let [pane, status, input] = Layout::vertical([
            Constraint::Min(1),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(f.area());
        self.pane_rows = pane.height as usize;
        let rows = wrap_rows(&self.lines, pane.width as usize);
        let h = pane.height as usize;
        self.scroll = self.scroll.min(rows.len().saturating_sub(h));
        let end = rows.len() - self.scroll;
        let start = end.saturating_sub(h);
        let shown: Vec<Line> = rows[start..end]
            .iter()
            .map(|(k, t)| Line::styled(t.clone(), style(*k)))
            .collect();
        f.render_widget(Paragraph::new(shown), pane);
        let mut bar = format!(" {} · {}", self.user, self.state);
        if self.unread > 0 {
            bar.push_str(&format!(" · {} unread (PgDn)", self.unread));
        } else if self.scroll > 0 {
            bar.push_str(" · scrolled back (PgDn)");
        }
        if let Some(p) = &self.progress {
            bar.push_str(&format!(" · {p}"));
        }
        let typed = self.editor.len();
        if typed + PROMPT.len() >= input.width as usize {
            // The line is wider than the screen: say how long it is.
            bar.push_str(&format!(" · line {}/{typed}", self.editor.cursor()));
        }
        let status_style = Style::default().add_modifier(Modifier::REVERSED);
        f.render_widget(Paragraph::new(Line::styled(bar, status_style)), status);
        let (text, cursor_col) = input_view(
            &self.editor.text(),
            self.editor.cursor(),
            input.width as usize,
        );
        f.render_widget(
            Paragraph::new(Line::from(vec![Span::raw(PROMPT), Span::raw(text)])),
            input,
        );
        f.set_cursor_position(Position::new(input.x + cursor_col as u16, input.y));
    }
}

fn style(kind: Kind) -> Style {
    match kind {
        Kind::Message => Style::default(),
        Kind::Info => Style::default().fg(Color::DarkGray),
        Kind::Error => Style::default().fg(Color::Red),
        Kind::Alarm => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

/// The pane's lines cut into rows of at most `width` columns.
fn wrap_rows(lines: &VecDeque<(Kind, String)>, width: usize) -> Vec<(Kind, String)> {
    let width = width.max(1);
    let mut rows = Vec::new();
    for (kind, line) in lines {
        let (mut row, mut cols) = (String::new(), 0);
        for c in line.chars() {
            let w = c.width().unwrap_or(0);
            if cols + w > width && !row.is_empty() {
                rows.push((*kind, std::mem::take(&mut row)));
                cols = 0;
            }
            row.push(c);
            cols += w;
        }
        rows.push((*kind, row));
    }
    rows
}

/// The part of the input line that fits after the prompt, keeping the
/// cursor in view; and the cursor's column on screen.
fn input_view(text: &str, cursor: usize, width: usize) -> (String, usize) {
    let room = width.saturating_sub(PROMPT.len() + 1).max(1);
    let chars: Vec<char> = text.chars().collect();
    // From the cursor back, as much as fits (one pass: a pasted line can
    // be long).
    let (mut start, mut before) = (cursor, 0);
    while start > 0 {
        let w = chars[start - 1].width().unwrap_or(0);
        if before + w > room {
            break;
        }
        before += w;
        start -= 1;
    }
    let mut shown = String::new();
    let mut used = 0;
    for c in &chars[start..] {
        let w = c.width().unwrap_or(0);
        if used + w > room + 1 {
            break;
        }
        shown.push(*c);
        used += w;
    }
    (shown, PROMPT.len() + before)
}

/// The terminal in raw mode on the alternate screen, put back on drop (also
/// when the client stops on an error); meanwhile stderr goes to a file.
struct RawTerminal(Terminal<CrosstermBackend<Stdout>>, Option<StderrToFile>);

impl RawTerminal {
    fn enter(log: &Path) -> std::io::Result<RawTerminal> {
        let redirect = StderrToFile::open(log)?;
        crossterm::terminal::enable_raw_mode()?;
        let mut out = std::io::stdout();
        crossterm::execute!(out, crossterm::terminal::EnterAlternateScreen)?;
        Ok(RawTerminal(
            Terminal::new(CrosstermBackend::new(out))?,
            Some(redirect),
        ))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            self.0.backend_mut(),
            crossterm::terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = crossterm::terminal::disable_raw_mode();
        drop(self.1.take());
    }
}

/// While the UI is up, what the process writes to stderr (its warnings, a
/// panic's message) goes to a file instead of over the screen; stderr is
/// put back on drop.
struct StderrToFile {
    saved: libc::c_int,
}

impl StderrToFile {
    fn open(path: &Path) -> std::io::Result<StderrToFile> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        // SAFETY: dup and dup2 on descriptor 2 and on one we own; both
        // results are checked, and `saved` is closed once (on drop).
        let saved = unsafe { libc::dup(2) };
        if saved < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
            let e = std::io::Error::last_os_error();
            unsafe { libc::close(saved) };
            return Err(e);
        }
        Ok(StderrToFile { saved })
    }
}

impl Drop for StderrToFile {
    fn drop(&mut self) {
        // SAFETY: `saved` is the stderr we duplicated in `open`, still open.
        unsafe {
            libc::dup2(self.saved, 2);
            libc::close(self.saved);
        }
    }
}

/// The UI, running: give [`Ui::front`] to the engine and [`Ui::input`] to
/// its run loop, then await `task`: it puts the terminal back once the
/// engine (which holds the front end) is gone.
pub struct Ui {
    pub front: TuiFrontend,
    pub input: mpsc::Receiver<String>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Ui {
    /// Takes over the terminal and shows `banner`; until it is put back,
    /// stderr goes to `log`.
    pub fn start(user: &str, banner: &str, log: &Path) -> std::io::Result<Ui> {
        let terminal = RawTerminal::enter(log)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (input_tx, input) = mpsc::channel(64);
        let screen = Screen {
            user: user.to_owned(),
            lines: VecDeque::new(),
            scroll: 0,
            unread: 0,
            state: "connecting…".into(),
            progress: None,
            editor: LineEditor::default(),
            pane_rows: 1,
        };
        let _ = tx.send(UiMsg::Line(Kind::Info, banner.to_owned()));
        let task = tokio::spawn(ui_loop(terminal, screen, rx, input_tx));
        let front = TuiFrontend {
            tx,
            text: TerminalFrontend::plain(),
        };
        Ok(Ui { front, input, task })
    }
}

/// Redraws wait this long after a change, so a burst (a paste, many lines
/// at once) is drawn once.
const FRAME: std::time::Duration = std::time::Duration::from_millis(15);

async fn ui_loop(
    mut terminal: RawTerminal,
    mut screen: Screen,
    mut rx: mpsc::UnboundedReceiver<UiMsg>,
    input_tx: mpsc::Sender<String>,
) {
    let mut keys = read_keys();
    let mut input_tx = Some(input_tx);
    let mut draw_at = Some(tokio::time::Instant::now());
    loop {
        let changed = tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => {
                    screen.apply(m);
                    true
                }
                None => return,
            },
            ev = keys.recv(), if input_tx.is_some() => {
                terminal_event(ev, &mut screen, &mut input_tx).await;
                true
            }
            _ = sleep_until(draw_at) => {
                draw_at = None;
                if terminal.0.draw(|f| screen.draw(f)).is_err() {
                    input_tx = None;
                }
                false
            }
        };
        if changed && draw_at.is_none() {
            draw_at = Some(tokio::time::Instant::now() + FRAME);
        }
    }
}

/// Terminal events, read on a thread of their own (a blocking read that
/// keeps up with a paste; it ends with the process).
fn read_keys() -> mpsc::Receiver<std::io::Result<TermEvent>> {
    let (tx, rx) = mpsc::channel(1024);
    std::thread::spawn(move || {
        loop {
            let ev = crossterm::event::read();
            let failed = ev.is_err();
            if tx.blocking_send(ev).is_err() || failed {
                return;
            }
        }
    });
    rx
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One terminal event: a key edits the line (a complete line goes to the
/// engine), the mouse wheel scrolls.
async fn terminal_event(
    ev: Option<std::io::Result<TermEvent>>,
    screen: &mut Screen,
    input_tx: &mut Option<mpsc::Sender<String>>,
) {
    match ev {
        Some(Ok(TermEvent::Key(k))) => {
            if let Some(line) = screen.key(k)
                && let Some(tx) = input_tx.as_ref()
                && tx.send(line).await.is_err()
            {
                *input_tx = None;
            }
        }
        Some(Ok(TermEvent::Mouse(m))) => match m.kind {
            MouseEventKind::ScrollUp => screen.scroll_by(3),
            MouseEventKind::ScrollDown => screen.scroll_by(-3),
            _ => {}
        },
        Some(Ok(_)) => {}
        // The terminal is gone: end of input, the engine quits.
        Some(Err(_)) | None => *input_tx = None,
    }
}

#[cfg(test)]
#[path = "tui_tests.rs"]
mod tests;
