//! Unit tests of `tui`.

use super::*;

#[test]
fn long_lines_wrap_and_the_input_keeps_the_cursor_in_view() {
    let lines: VecDeque<(Kind, String)> =
        [(Kind::Info, "abcdefgh".to_owned())].into_iter().collect();
    let rows = wrap_rows(&lines, 3);
    let texts: Vec<&str> = rows.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["abc", "def", "gh"]);
    assert_eq!(input_view("hello", 5, 80), ("hello".to_owned(), 7));
    let (shown, col) = input_view(&"x".repeat(100), 100, 20);
    assert!(shown.len() <= 18 && col <= 19, "{shown} {col}");
}

#[test]
fn lines_arriving_while_scrolled_back_count_as_unread() {
    let mut s = Screen {
        user: "alice".into(),
        lines: VecDeque::new(),
        scroll: 0,
        unread: 0,
        state: String::new(),
        progress: None,
        editor: LineEditor::default(),
        pane_rows: 5,
    };
    for i in 0..10 {
        s.apply(UiMsg::Line(Kind::Message, format!("line {i}")));
    }
    assert_eq!(s.unread, 0);
    s.scroll_by(4);
    s.apply(UiMsg::Line(Kind::Message, "new".into()));
    assert_eq!((s.unread, s.scroll), (1, 5), "the view stays put");
    s.scroll_by(-5);
    assert_eq!((s.unread, s.scroll), (0, 0));
}
