//! `procflow top`: a terminal view of procflow's live state (what
//! `procflow run` publishes as a [`Snapshot`]), in the manner of nethogs,
//! bandwhich and iftop.
//!
//! The data comes from a [`Source`] (the daemon's API, or an in-process
//! collector); [`run`] draws it on the terminal, fetching a snapshot every
//! [`Options::interval`]. [`App`] is the state machine and renderer,
//! separate from the terminal so tests draw it on a test backend.
//!
//! # Views
//!
//! - **processes** (the default): PID, USER, SENT/s, RECV/s (the last
//!   second), SENT, RECV (since procflow started), TODAY (sent + received
//!   today by the executable, from the history; only when there is one),
//!   CONN (open connections), BLK (blocked attempts), PROGRAM (the
//!   executable, or the comm and why the executable is not known).
//! - **connections** of the selected process: PROTO, LPORT, REMOTE (the
//!   DNS name when known, else the address), RPORT, SERVICE (the
//!   well-known name of the service port), DIR, STATE, SENT, RECV, RATE
//!   (both ways, the last second), VERDICT and RULE.
//! - **remote hosts**: IP, rates, totals, CONN, FLOWS (seen since start),
//!   NAME.
//! - **ports** and protocols: PROTO, PORT, rates, totals, CONN, FLOWS,
//!   SERVICE.
//! - **blocked attempts**, newest first: TIME (UTC), RULE, HOOK, PROTO,
//!   REMOTE, PID, USER, PROCESS.
//!
//! # Keys
//!
//! | key | action |
//! |-----|--------|
//! | `q`, `Ctrl-C` | quit |
//! | `?`, `F1` | help (any key closes it) |
//! | `Enter`, `c` | connections of the selected process (of its tree with `t`) |
//! | `Esc`, `Backspace` | back to processes; `Esc` in processes clears the filter |
//! | `r` / `p` / `b` | remote hosts / ports / blocked attempts |
//! | `Tab`, `1`-`5` | next view / view by number |
//! | `s`, `Right` / `S`, `Left` | sort by the next / previous column (marked `▼`/`▲` in the header) |
//! | `i` | reverse the sort order |
//! | `Up` `Down` `PgUp` `PgDn` `Home` `End` (`k` `j` `g` `G`) | move the selection |
//! | `/` | filter: type text (program, comm, user, pid, remote address or name, rule...), `Enter` keeps it, `Esc` clears it |
//! | `space` | pause: updates are kept but not shown until resumed |
//! | `t` | process tree: a child whose parent is listed is added into the parent's row (`+N`) |
//! | `a` | cumulative totals lead, or rates lead |
//!
//! The selection stays on the same row (a process by pid and label)
//! across updates while it exists. Columns that do not fit are dropped
//! (the least useful first, never the sorted one); the last text column
//! takes the rest of the width, long executable paths lose their left
//! part (`…/lib/firefox/firefox`).

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyEventKind};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use procflow_core::live::Snapshot;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

mod app;
mod fmt;
mod view;

#[cfg(test)]
mod tests;

pub use app::App;
pub use view::View;

/// Where top's data comes from: the daemon's API, or an in-process collector.
pub trait Source {
    /// The current live state (called once per --interval), with the
    /// flows of the processes `flows_of` names (`None`: no flows are
    /// needed; the views that show none ask for none, which keeps a
    /// snapshot of many flows small).
    fn snapshot(&mut self, flows_of: Option<&[u32]>) -> Result<Snapshot, String>;
    /// Bytes sent and received today per executable, from the history, when a store exists (None: no store / not available).
    fn today(&mut self) -> Option<HashMap<String, (u64, u64)>> {
        None
    }
    /// One line saying where the data comes from, e.g. "daemon /run/procflow/api.sock" or "standalone: kernel programs loaded by top (no daemon running)".
    fn describe(&self) -> String;
}

#[derive(Debug, Clone)]
pub struct Options {
    pub interval: Duration,
}

/// How often today's totals are asked for (a history query) at most.
const TODAY_EVERY: Duration = Duration::from_secs(10);

/// Runs the UI on the terminal until q / Ctrl-C; the terminal is restored
/// on exit, on error and on panic (a panic hook restores it, then calls
/// the previous hook).
pub fn run(source: &mut dyn Source, opts: &Options) -> anyhow::Result<()> {
    install_panic_hook();
    if let Err(e) = enter() {
        let _ = restore();
        return Err(anyhow::Error::new(e).context("setting up the terminal"));
    }
    let result = event_loop(source, opts);
    let restored = restore();
    result?;
    restored?;
    Ok(())
}

/// Fetches from the source into the app: a snapshot each time, today's
/// totals at most every [`TODAY_EVERY`]. A failed snapshot is shown as an
/// error and the last good data stays.
#[derive(Debug, Default)]
struct Fetcher {
    today: Option<HashMap<String, (u64, u64)>>,
    /// The flows the last snapshot was asked for.
    wanted: Option<Vec<u32>>,
    today_at: Option<Instant>,
}

impl Fetcher {
    fn fetch(&mut self, source: &mut dyn Source, app: &mut App, now: Instant) {
        if self
            .today_at
            .is_none_or(|t| now.duration_since(t) >= TODAY_EVERY)
        {
            self.today = source.today();
            self.today_at = Some(now);
        }
        let wanted = app.flows_wanted();
        self.wanted = wanted.clone();
        match source.snapshot(wanted.as_deref()) {
            Ok(s) => {
                app.set_error(None);
                app.update(s, self.today.clone());
            }
            Err(e) => app.set_error(Some(e)),
        }
    }
}

fn event_loop(source: &mut dyn Source, opts: &Options) -> anyhow::Result<()> {
    let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    let interval = opts.interval.max(Duration::from_millis(100));
    let mut app = App::new(source.describe());
    let mut fetcher = Fetcher::default();
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next {
            fetcher.fetch(source, &mut app, now);
            next = now + interval;
        }
        term.draw(|f| app.render(f))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(k) if k.kind != KeyEventKind::Release => {
                    if !app.key(k) {
                        return Ok(());
                    }
                    // A view that needs other flows is fetched for at once.
                    if app.flows_wanted() != fetcher.wanted {
                        next = Instant::now();
                    }
                }
                // Resize and the rest: redrawn at the new size above.
                _ => {}
            }
        }
    }
}

/// The terminal is in raw mode on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Times the panic hook ran (for tests).
static HOOK_RAN: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

fn enter() -> io::Result<()> {
    terminal::enable_raw_mode()?;
    ACTIVE.store(true, Ordering::SeqCst);
    crossterm::execute!(io::stdout(), EnterAlternateScreen, crossterm::cursor::Hide)?;
    Ok(())
}

/// Restores the terminal (raw mode off, main screen, cursor shown) when
/// it was set up; harmless when it was not, or already restored.
fn restore() -> io::Result<bool> {
    restore_to(&mut io::stdout())
}

fn restore_to<W: Write>(out: &mut W) -> io::Result<bool> {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return Ok(false);
    }
    let raw = terminal::disable_raw_mode();
    crossterm::execute!(out, LeaveAlternateScreen, crossterm::cursor::Show)?;
    raw?;
    Ok(true)
}

/// Installs (once) a panic hook that restores the terminal before the
/// previous hook prints the panic, so the message is readable.
fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            HOOK_RAN.fetch_add(1, Ordering::SeqCst);
            let _ = restore();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod terminal_tests {
    use super::*;

    #[test]
    fn the_panic_hook_restores_and_restoring_twice_is_harmless() {
        // Not set up: nothing is written.
        let mut out = Vec::new();
        assert!(!restore_to(&mut out).unwrap());
        assert!(out.is_empty());
        // Set up (without raw mode, which only the terminal can enter):
        // the first restore leaves the alternate screen, the second does
        // nothing.
        ACTIVE.store(true, Ordering::SeqCst);
        assert!(restore_to(&mut out).unwrap());
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            text.contains("\x1b[?1049l"),
            "leaves the alternate screen: {text:?}"
        );
        assert!(text.contains("\x1b[?25h"), "shows the cursor: {text:?}");
        let len = out.len();
        assert!(!restore_to(&mut out).unwrap());
        assert_eq!(out.len(), len);
        // The hook is installed once and runs on a panic, restoring first.
        install_panic_hook();
        install_panic_hook();
        let before = HOOK_RAN.load(Ordering::SeqCst);
        ACTIVE.store(true, Ordering::SeqCst);
        let r = std::panic::catch_unwind(|| panic!("test panic"));
        assert!(r.is_err());
        assert!(HOOK_RAN.load(Ordering::SeqCst) > before);
        assert!(
            !ACTIVE.load(Ordering::SeqCst),
            "the hook restored the terminal"
        );
    }
}
