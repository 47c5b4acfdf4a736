//! The input line of the terminal UI as plain data: the text being typed, the
//! cursor, editing keys and the history of lines sent (Up/Down). No terminal
//! here: [`super::tui`] turns keys into these calls and draws the result.

/// Lines kept in the history.
pub const HISTORY_MAX: usize = 1000;

/// The line being typed and the lines typed before.
#[derive(Debug, Default)]
pub struct LineEditor {
    text: Vec<char>,
    /// Cursor position, in characters from the start.
    cursor: usize,
    history: Vec<String>,
    /// Which history entry is shown (None: the line being typed).
    browsing: Option<usize>,
    /// The line being typed, kept while browsing the history.
    draft: Vec<char>,
}

impl LineEditor {
    /// The text on the line.
    pub fn text(&self) -> String {
        self.text.iter().collect()
    }

    /// The line's length, in characters.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// True if nothing is typed.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The cursor, in characters from the start of the line.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn insert(&mut self, c: char) {
        self.text.insert(self.cursor, c);
        self.cursor += 1;
    }

    /// Backspace: the character before the cursor.
    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.text.remove(self.cursor);
        }
    }

    /// Delete: the character under the cursor.
    pub fn delete(&mut self) {
        if self.cursor < self.text.len() {
            self.text.remove(self.cursor);
        }
    }

    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.text.len());
    }

    pub fn home(&mut self) {
        self.cursor = 0;
    }

    pub fn end(&mut self) {
        self.cursor = self.text.len();
    }

    /// Ctrl-U: everything before the cursor.
    pub fn kill_to_start(&mut self) {
        self.text.drain(..self.cursor);
        self.cursor = 0;
    }

    /// Ctrl-K: everything from the cursor on.
    pub fn kill_to_end(&mut self) {
        self.text.truncate(self.cursor);
    }

    /// Ctrl-W: the word before the cursor (and the spaces after it).
    pub fn kill_word(&mut self) {
        let mut start = self.cursor;
        while start > 0 && self.text[start - 1] == ' ' {
            start -= 1;
        }
        while start > 0 && self.text[start - 1] != ' ' {
            start -= 1;
        }
        self.text.drain(start..self.cursor);
        self.cursor = start;
    }

    /// Up: the previous line of the history.
    pub fn up(&mut self) {
        let next = match self.browsing {
            None if self.history.is_empty() => return,
            None => {
                self.draft = std::mem::take(&mut self.text);
                self.history.len() - 1
            }
            Some(0) => return,
            Some(i) => i - 1,
        };
        self.show(Some(next));
    }

    /// Down: the next line of the history, then the line being typed.
    pub fn down(&mut self) {
        match self.browsing {
            None => {}
            Some(i) if i + 1 < self.history.len() => self.show(Some(i + 1)),
            Some(_) => self.show(None),
        }
    }

    fn show(&mut self, entry: Option<usize>) {
        self.browsing = entry;
        self.text = match entry {
            Some(i) => self.history[i].chars().collect(),
            None => std::mem::take(&mut self.draft),
        };
        self.cursor = self.text.len();
    }

    /// Enter: the line, now empty, goes into the history (unless blank or
    /// the same as the last one).
    pub fn submit(&mut self) -> String {
        let line: String = std::mem::take(&mut self.text).into_iter().collect();
        self.cursor = 0;
        self.browsing = None;
        self.draft.clear();
        if !line.trim().is_empty() && self.history.last() != Some(&line) {
            self.history.push(line.clone());
            if self.history.len() > HISTORY_MAX {
                self.history.remove(0);
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> LineEditor {
        let mut e = LineEditor::default();
        s.chars().for_each(|c| e.insert(c));
        e
    }

    #[test]
    fn editing_keys_move_and_change_the_line() {
        let mut e = typed("/msg bob abc");
        e.left();
        e.left();
        e.insert('X');
        assert_eq!((e.text().as_str(), e.cursor()), ("/msg bob aXbc", 11));
        e.home();
        e.delete();
        e.insert('/');
        e.end();
        e.backspace();
        assert_eq!(e.text(), "/msg bob aXb");
        e.kill_word();
        assert_eq!(e.text(), "/msg bob ");
        e.kill_word();
        assert_eq!(e.text(), "/msg ");
        e.home();
        e.right();
        e.kill_to_end();
        assert_eq!(e.text(), "/");
        let mut e = typed("abc def");
        e.left();
        e.kill_to_start();
        assert_eq!((e.text().as_str(), e.cursor()), ("f", 0));
        let mut e = typed("é😀");
        e.left();
        e.backspace();
        assert_eq!(e.text(), "😀");
    }

    #[test]
    fn history_browses_back_and_returns_to_the_draft() {
        let mut e = typed("/msg bob one");
        assert_eq!(e.submit(), "/msg bob one");
        "/list".chars().for_each(|c| e.insert(c));
        e.submit();
        e.submit(); // blank lines are not kept
        "/lis".chars().for_each(|c| e.insert(c));
        e.insert('t');
        e.submit(); // nor the same line twice in a row
        "draft".chars().for_each(|c| e.insert(c));
        e.up();
        assert_eq!(e.text(), "/list");
        e.up();
        assert_eq!(e.text(), "/msg bob one");
        e.up();
        assert_eq!(e.text(), "/msg bob one", "stays at the oldest");
        e.down();
        e.down();
        assert_eq!((e.text().as_str(), e.cursor()), ("draft", 5));
        e.up();
        e.insert('!');
        assert_eq!(e.submit(), "/list!");
        assert_eq!(e.text(), "");
    }
}
