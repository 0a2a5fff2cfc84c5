//! The full-screen loop: terminal setup and restore, keys, session events, redraws.

use std::io;
use std::time::Duration;

use crossterm::event::{DisableBracketedPaste, EnableBracketedPaste, Event, EventStream};
use futures::StreamExt;

use crate::exit;
use crate::session::{Session, SessionEvent};
use crate::ui::{self, App};

/// Puts the terminal back (raw mode off, main screen, paste mode off) when dropped: on
/// return, on error and while unwinding from a panic. ratatui's own panic hook restores
/// it before the panic message is printed.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = crossterm::execute!(io::stdout(), DisableBracketedPaste);
        ratatui::restore();
    }
}

/// Runs the interactive client until the user quits. Returns the exit code.
pub async fn run(mut session: Session, mut app: App) -> io::Result<i32> {
    let mut terminal = ratatui::try_init()?;
    let _guard = TerminalGuard;
    let _ = crossterm::execute!(io::stdout(), EnableBracketedPaste);
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut signals = Signals::new();
    let mut code = exit::OK;
    loop {
        terminal.draw(|frame| ui::draw(frame, &app, session.client()))?;
        tokio::select! {
            key = keys.next() => match key {
                Some(Ok(Event::Key(key))) => {
                    session.with(|client| app.on_key(key, client));
                }
                Some(Ok(Event::Paste(text))) => session.with(|client| app.on_paste(&text, client)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            },
            event = session.next() => match event {
                Some(event) => {
                    let failed = matches!(event, SessionEvent::Failed { .. });
                    session.with(|client| app.on_event(&event, client));
                    if failed {
                        code = exit::CONNECTION;
                    }
                }
                None => break,
            },
            _ = tick.tick() => session.with(|client| app.on_tick(client)),
            () = signals.recv() => app.quit(),
        }
        if app.should_quit() {
            break;
        }
    }
    Ok(code)
}

/// SIGINT, SIGTERM and SIGHUP end the loop like /quit (so the terminal is restored).
struct Signals {
    #[cfg(unix)]
    signals: Vec<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = [
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
            ]
            .into_iter()
            .filter_map(|kind| signal(kind).ok())
            .collect();
            Signals { signals }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.signals.is_empty() {
                return std::future::pending().await;
            }
            let waits = self.signals.iter_mut().map(|s| Box::pin(s.recv()));
            futures::future::select_all(waits).await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
