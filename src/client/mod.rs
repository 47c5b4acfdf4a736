//! The client side: a user's session with a node, the keyring, commands,
//! key lookups, the outbox, safe file reception, the engine, and the front
//! ends: the terminal UI (`tui`, with the line `editor`) when stdin and
//! stdout are a terminal, plain lines otherwise, and JSON (`--json`).

pub mod codes;
pub mod commands;
pub mod display;
pub mod editor;
pub mod engine;
pub mod events;
pub mod files;
pub mod journal;
pub mod keyring;
pub mod lookups;
pub mod outbox;
pub mod session;
pub mod terminal;
pub mod tui;

use std::path::PathBuf;

pub use engine::{ClientConfig, Engine, Stopped};
pub use events::{Event, Frontend, JsonFrontend, TerminalFrontend};
pub use session::{HelloStyle, Session, SessionError};

use tokio::sync::mpsc;

/// The longest line a terminal in canonical mode hands over (Linux
/// `N_TTY_BUF_SIZE` less the newline): a longer typed line is cut there by
/// the kernel before we read it.
pub const TTY_LINE_MAX: usize = 4095;

/// Reads stdin line by line into a channel; closes it at end of input.
/// Lines from a pipe or file are never cut, whatever their length. A line
/// read from a terminal that fills the terminal's line buffer may have been
/// cut by the kernel: it is refused (with a message on stderr) rather than
/// sent cut.
///
/// The reading runs on a thread of its own, not on the runtime's blocking
/// pool: a read that waits for input must not keep the process alive after
/// `/quit` (the runtime waits for its blocking tasks when it shuts down).
pub fn spawn_stdin() -> mpsc::Receiver<String> {
    use std::io::{BufRead, IsTerminal};
    let tty = std::io::stdin().is_terminal();
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tty && line.len() >= TTY_LINE_MAX {
                eprintln!(
                    "error USAGE: that line reached the terminal's {TTY_LINE_MAX}-byte line limit and may have been cut; \
                     nothing was sent. Send long text from a pipe (socp client ... < file) or as /file"
                );
                continue;
            }
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Paths a client uses, from its flags.
pub fn config(
    user: &str,
    server: &str,
    keys: &std::path::Path,
    downloads: PathBuf,
    max_file_size: u64,
) -> ClientConfig {
    ClientConfig {
        user: user.to_owned(),
        server: server.to_owned(),
        key_path: keys.join(format!("{user}.pem")),
        keyring_path: keys.join(format!("{user}.sqlite")),
        downloads,
        max_file_size,
        tls: None,
        invite: None,
    }
}

/// The terminal front end: the full-screen UI when stdin and stdout are
/// both a terminal, plain lines otherwise (pipes, files, tests).
pub async fn run_terminal(config: ClientConfig, banner: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        let log = config.key_path.with_extension("log");
        let banner = format!("{banner}; warnings go to {}", log.display());
        let ui = tui::Ui::start(&config.user, &banner, &log)?;
        let (front, input) = (ui.front, ui.input);
        let task = ui.task;
        let result = match Engine::open(config, front).await {
            Ok(engine) => engine.run(input).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        let _ = task.await;
        return result;
    }
    let mut front = TerminalFrontend::default();
    Frontend::emit(
        &mut front,
        &Event::Help {
            text: banner.to_owned(),
        },
    );
    let input = spawn_stdin();
    Engine::open(config, front).await?.run(input).await?;
    Ok(())
}
