//! Terminal chat client (work in progress: see issue 5).
fn main() {
    eprintln!("chat-cli: not built yet (issue 5)");
    std::process::exit(2);
}
