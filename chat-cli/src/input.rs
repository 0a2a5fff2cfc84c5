//! The input line: a small line editor with history (readline's common keys).

/// Most lines kept in the input history.
const HISTORY_MAX: usize = 500;

/// The text being typed, the cursor, and the lines typed before.
#[derive(Debug, Clone, Default)]
pub struct LineEditor {
    chars: Vec<char>,
    cursor: usize,
    history: Vec<String>,
    /// While browsing history: the entry shown and the line that was being typed.
    browsing: Option<(usize, String)>,
}

impl LineEditor {
    /// An empty line.
    #[must_use]
    pub fn new() -> LineEditor {
        LineEditor::default()
    }

    /// The text.
    #[must_use]
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// Whether nothing is typed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The cursor, in characters from the start.
    #[must_use]
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Inserts text at the cursor.
    pub fn insert_str(&mut self, text: &str) {
        for c in text.chars() {
            self.insert(c);
        }
    }

    /// Inserts a character at the cursor.
    pub fn insert(&mut self, c: char) {
        self.chars.insert(self.cursor, c);
        self.cursor += 1;
        self.browsing = None;
    }

    /// Deletes the character before the cursor (Backspace).
    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.chars.remove(self.cursor);
        }
    }

    /// Deletes the character under the cursor (Delete).
    pub fn delete(&mut self) {
        if self.cursor < self.chars.len() {
            self.chars.remove(self.cursor);
        }
    }

    /// Moves one character left.
    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    /// Moves one character right.
    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.chars.len());
    }

    /// Moves to the start (Home, Ctrl-A).
    pub fn home(&mut self) {
        self.cursor = 0;
    }

    /// Moves to the end (End, Ctrl-E).
    pub fn end(&mut self) {
        self.cursor = self.chars.len();
    }

    /// Moves to the start of the previous word (Ctrl-Left, Alt-B).
    pub fn word_left(&mut self) {
        self.cursor = self.word_start();
    }

    /// Moves past the end of the next word (Ctrl-Right, Alt-F).
    pub fn word_right(&mut self) {
        let mut i = self.cursor;
        while i < self.chars.len() && self.chars[i].is_whitespace() {
            i += 1;
        }
        while i < self.chars.len() && !self.chars[i].is_whitespace() {
            i += 1;
        }
        self.cursor = i;
    }

    /// Deletes the word before the cursor (Ctrl-W).
    pub fn delete_word(&mut self) {
        let start = self.word_start();
        self.chars.drain(start..self.cursor);
        self.cursor = start;
    }

    /// Deletes from the start to the cursor (Ctrl-U).
    pub fn kill_to_start(&mut self) {
        self.chars.drain(..self.cursor);
        self.cursor = 0;
    }

    /// Deletes from the cursor to the end (Ctrl-K).
    pub fn kill_to_end(&mut self) {
        self.chars.truncate(self.cursor);
    }

    /// Shows the previous history entry (Up).
    pub fn history_up(&mut self) {
        let index = match &self.browsing {
            None if self.history.is_empty() => return,
            None => {
                self.browsing = Some((self.history.len() - 1, self.text()));
                self.history.len() - 1
            }
            Some((0, _)) => return,
            Some((i, draft)) => {
                let i = i - 1;
                self.browsing = Some((i, draft.clone()));
                i
            }
        };
        self.show(&self.history[index].clone());
    }

    /// Shows the next history entry, or the line being typed before (Down).
    pub fn history_down(&mut self) {
        let Some((i, draft)) = self.browsing.clone() else {
            return;
        };
        if i + 1 < self.history.len() {
            self.browsing = Some((i + 1, draft));
            self.show(&self.history[i + 1].clone());
        } else {
            self.browsing = None;
            self.show(&draft);
        }
    }

    /// Takes the line (Enter): clears the editor and remembers the line in the history.
    pub fn take(&mut self) -> String {
        let line = self.text();
        self.chars.clear();
        self.cursor = 0;
        self.browsing = None;
        if !line.trim().is_empty() && self.history.last() != Some(&line) {
            self.history.push(line.clone());
            if self.history.len() > HISTORY_MAX {
                self.history.remove(0);
            }
        }
        line
    }

    fn show(&mut self, text: &str) {
        self.chars = text.chars().collect();
        self.cursor = self.chars.len();
    }

    fn word_start(&self) -> usize {
        let mut i = self.cursor;
        while i > 0 && self.chars[i - 1].is_whitespace() {
            i -= 1;
        }
        while i > 0 && !self.chars[i - 1].is_whitespace() {
            i -= 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editing_keys() {
        let mut e = LineEditor::new();
        e.insert_str("hello world");
        e.home();
        e.delete();
        e.insert('H');
        e.end();
        e.backspace();
        e.insert('D');
        assert_eq!(e.text(), "Hello worlD");
        e.word_left();
        assert_eq!(e.cursor(), 6);
        e.kill_to_end();
        assert_eq!(e.text(), "Hello ");
        e.insert_str("there friend");
        e.delete_word();
        assert_eq!(e.text(), "Hello there ");
        e.word_left();
        e.word_left();
        e.word_right();
        assert_eq!(e.cursor(), 5);
        e.kill_to_start();
        assert_eq!(e.text(), " there ");
        e.left();
        e.right();
        e.right();
        assert_eq!(e.cursor(), 2);
        e.end();
        e.right();
        assert_eq!(e.cursor(), 7);
    }

    #[test]
    fn history_browsing_keeps_the_draft() {
        let mut e = LineEditor::new();
        e.insert_str("one");
        assert_eq!(e.take(), "one");
        e.insert_str("two");
        e.take();
        e.insert_str("dra");
        e.history_up();
        assert_eq!(e.text(), "two");
        e.history_up();
        assert_eq!(e.text(), "one");
        e.history_up();
        assert_eq!(e.text(), "one");
        e.history_down();
        assert_eq!(e.text(), "two");
        e.history_down();
        assert_eq!(e.text(), "dra");
        assert!(!e.is_empty());
    }
}
