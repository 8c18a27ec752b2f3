//! The state machine (keys, updates) and the renderer.

use std::collections::HashMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use procflow_core::live::Snapshot;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, HighlightSpacing, Paragraph, Row as TRow, Table, TableState, Wrap,
};
use ratatui::Frame;

use crate::fmt;
use crate::view::{self, Col, ColId, Ctx, Row, View};

/// The selection of one view: the row's identity, kept across updates,
/// and its index, used when that row is gone.
#[derive(Debug, Clone, Default)]
struct Sel {
    id: Option<String>,
    index: usize,
}

/// Bytes sent and received today by executable.
type Today = HashMap<String, (u64, u64)>;

/// The processes the connections view shows.
#[derive(Debug, Clone)]
struct ConnOf {
    /// The row's pid and label, for the title.
    title: String,
    members: Vec<(u32, String)>,
}

/// The help text: key, what it does.
pub(crate) const KEYS: &[(&str, &str)] = &[
    ("q, Ctrl-C", "quit"),
    ("?", "this help (any key closes it)"),
    ("Enter, c", "connections of the selected process"),
    (
        "Esc, Backspace",
        "back to processes (Esc there: clear filter)",
    ),
    ("r", "remote hosts"),
    ("p", "ports and protocols"),
    ("b", "blocked attempts"),
    ("Tab, 1-5", "next view, view by number"),
    ("s, Right / S, Left", "sort by next / previous column"),
    ("i", "reverse the sort order"),
    ("Up Down PgUp PgDn", "move the selection (also j k)"),
    ("Home End", "first / last row (also g G)"),
    ("/", "filter (Enter keeps it, Esc clears it)"),
    ("t", "process tree: children added into parents"),
    ("a", "cumulative totals first, or rates first"),
    ("space", "pause (updates kept, shown on resume)"),
];

/// The UI: everything it shows, and how keys change it.
#[derive(Debug)]
pub struct App {
    describe: String,
    snap: Option<Snapshot>,
    today: Option<Today>,
    /// The newest update while paused.
    pending: Option<(Snapshot, Option<Today>)>,
    error: Option<String>,
    view: View,
    /// Per view: the sorted column and whether the order is reversed.
    sort: [(ColId, bool); 5],
    sel: [Sel; 5],
    states: [TableState; 5],
    conn_of: Option<ConnOf>,
    filter: String,
    editing: bool,
    paused: bool,
    tree: bool,
    cumulative: bool,
    help: bool,
    /// Rows in the last table drawn (PgUp/PgDn).
    page: usize,
}

impl App {
    pub fn new(describe: String) -> App {
        App {
            describe,
            snap: None,
            today: None,
            pending: None,
            error: None,
            view: View::Processes,
            sort: View::ALL.map(|v| (v.default_sort(), false)),
            sel: Default::default(),
            states: Default::default(),
            conn_of: None,
            filter: String::new(),
            editing: false,
            paused: false,
            tree: false,
            cumulative: false,
            help: false,
            page: 10,
        }
    }

    /// A new snapshot (and today's totals by executable, when a history
    /// is there). While paused it is kept, not shown.
    pub fn update(&mut self, snap: Snapshot, today: Option<HashMap<String, (u64, u64)>>) {
        if self.paused {
            self.pending = Some((snap, today));
        } else {
            self.snap = Some(snap);
            self.today = today;
        }
    }

    /// The last snapshot failed (`Some`), or one succeeded (`None`): the
    /// status line shows the error, the last good data stays.
    pub fn set_error(&mut self, error: Option<String>) {
        self.error = error;
    }

    /// The processes whose flows the view shown needs (the connections
    /// view's), or `None`: no view but that one shows flows.
    pub fn flows_wanted(&self) -> Option<Vec<u32>> {
        match (self.view, &self.conn_of) {
            (View::Connections, Some(c)) => {
                let mut pids: Vec<u32> = c.members.iter().map(|(p, _)| *p).collect();
                pids.sort_unstable();
                pids.dedup();
                Some(pids)
            }
            _ => None,
        }
    }

    /// The view shown.
    pub fn view(&self) -> View {
        self.view
    }

    fn columns(&self, v: View) -> Vec<Col> {
        view::columns(v, self.cumulative, self.today.is_some())
    }

    /// The sorted column's index in `cols` and whether it sorts largest
    /// first.
    pub(crate) fn sort_of(&self, v: View, cols: &[Col]) -> (usize, bool) {
        let (id, rev) = self.sort[v.index()];
        let at = cols
            .iter()
            .position(|c| c.id == id)
            .or_else(|| cols.iter().position(|c| c.id == v.default_sort()))
            .unwrap_or(0);
        (at, cols[at].desc != rev)
    }

    /// The view's rows, filtered and sorted, as shown.
    pub(crate) fn rows(&self, v: View) -> (Vec<Col>, Vec<Row>) {
        let cols = self.columns(v);
        let Some(snap) = &self.snap else {
            return (cols, Vec::new());
        };
        let filter = self.filter.to_lowercase();
        let ctx = Ctx {
            snap,
            today: self.today.as_ref(),
            filter: &filter,
            tree: self.tree,
            conn_of: self
                .conn_of
                .as_ref()
                .map(|c| c.members.as_slice())
                .unwrap_or(&[]),
        };
        let mut rows = view::rows(v, &cols, &ctx);
        let (at, desc) = self.sort_of(v, &cols);
        view::sort(&mut rows, at, desc);
        (cols, rows)
    }

    /// The selected row's index in `rows`: the same row as before when it
    /// is still there, else the same place.
    fn resolve(&mut self, v: View, rows: &[Row]) -> Option<usize> {
        let sel = &mut self.sel[v.index()];
        if rows.is_empty() {
            sel.index = 0;
            return None;
        }
        let i = sel
            .id
            .as_ref()
            .and_then(|id| rows.iter().position(|r| &r.id == id))
            .unwrap_or(sel.index.min(rows.len() - 1));
        sel.index = i;
        sel.id = Some(rows[i].id.clone());
        Some(i)
    }

    fn select(&mut self, v: View, rows: &[Row], i: usize) {
        let sel = &mut self.sel[v.index()];
        if let Some(r) = rows.get(i) {
            sel.index = i;
            sel.id = Some(r.id.clone());
        }
    }

    /// The selected row of the view shown.
    pub(crate) fn selected(&mut self) -> Option<Row> {
        let (_, rows) = self.rows(self.view);
        let i = self.resolve(self.view, &rows)?;
        rows.into_iter().nth(i)
    }

    fn open_connections(&mut self) {
        if self.conn_of.is_none() {
            // From another view, the first time: the process selected in
            // the processes view.
            self.view = View::Processes;
        }
        if self.view == View::Processes {
            if let Some(r) = self.selected() {
                let title = match r.members.first() {
                    Some((pid, label)) if r.members.len() > 1 => {
                        format!("{pid} {label} and {} children", r.members.len() - 1)
                    }
                    Some((pid, label)) => format!("{pid} {label}"),
                    None => r.id.clone(),
                };
                self.conn_of = Some(ConnOf {
                    title,
                    members: r.members,
                });
                self.sel[View::Connections.index()] = Sel::default();
                self.states[View::Connections.index()] = TableState::default();
            }
        }
        if self.conn_of.is_some() {
            self.view = View::Connections;
        }
    }

    fn show(&mut self, v: View) {
        if v == View::Connections {
            self.open_connections();
        } else {
            self.view = v;
        }
    }

    fn toggle_pause(&mut self) {
        self.paused = !self.paused;
        if !self.paused {
            if let Some((s, t)) = self.pending.take() {
                self.snap = Some(s);
                self.today = t;
            }
        }
    }

    fn move_sel(&mut self, to: impl Fn(usize, usize) -> usize) {
        let v = self.view;
        let (_, rows) = self.rows(v);
        if let Some(i) = self.resolve(v, &rows) {
            let j = to(i, rows.len()).min(rows.len() - 1);
            self.select(v, &rows, j);
        }
    }

    fn cycle_sort(&mut self, forward: bool) {
        let v = self.view;
        let cols = self.columns(v);
        let (at, _) = self.sort_of(v, &cols);
        let n = cols.len();
        let next = if forward {
            (at + 1) % n
        } else {
            (at + n - 1) % n
        };
        self.sort[v.index()] = (cols[next].id, false);
    }

    /// Handles a key; false: quit.
    pub fn key(&mut self, k: KeyEvent) -> bool {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c') | KeyCode::Char('C')) {
            return false;
        }
        if self.editing {
            match k.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !ctrl => self.filter.push(c),
                _ => {}
            }
            return true;
        }
        if self.help {
            self.help = false;
            return !matches!(k.code, KeyCode::Char('q'));
        }
        match k.code {
            KeyCode::Char('q') => return false,
            KeyCode::Char('?') | KeyCode::F(1) => self.help = true,
            KeyCode::Enter | KeyCode::Char('c') => self.show(View::Connections),
            KeyCode::Esc | KeyCode::Backspace => {
                if self.view == View::Processes {
                    if k.code == KeyCode::Esc {
                        self.filter.clear();
                    }
                } else {
                    self.view = View::Processes;
                }
            }
            KeyCode::Char('r') => self.show(View::Remotes),
            KeyCode::Char('p') => self.show(View::Ports),
            KeyCode::Char('b') => self.show(View::Blocked),
            KeyCode::Tab => {
                let mut i = (self.view.index() + 1) % View::ALL.len();
                if View::ALL[i] == View::Connections && self.conn_of.is_none() {
                    i += 1;
                }
                self.view = View::ALL[i];
            }
            KeyCode::Char(d @ '1'..='5') => self.show(View::ALL[d as usize - '1' as usize]),
            KeyCode::Char('s') | KeyCode::Right => self.cycle_sort(true),
            KeyCode::Char('S') | KeyCode::Left => self.cycle_sort(false),
            KeyCode::Char('i') | KeyCode::Char('I') => {
                let s = &mut self.sort[self.view.index()];
                s.1 = !s.1;
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_sel(|i, _| i.saturating_sub(1)),
            KeyCode::Down | KeyCode::Char('j') => self.move_sel(|i, _| i + 1),
            KeyCode::PageUp => {
                let p = self.page.max(1);
                self.move_sel(|i, _| i.saturating_sub(p))
            }
            KeyCode::PageDown => {
                let p = self.page.max(1);
                self.move_sel(|i, _| i + p)
            }
            KeyCode::Home | KeyCode::Char('g') => self.move_sel(|_, _| 0),
            KeyCode::End | KeyCode::Char('G') => self.move_sel(|_, n| n),
            KeyCode::Char('/') => self.editing = true,
            KeyCode::Char(' ') => self.toggle_pause(),
            KeyCode::Char('t') => self.tree = !self.tree,
            KeyCode::Char('a') => {
                self.cumulative = !self.cumulative;
                for s in self.sort.iter_mut() {
                    s.0 = s.0.twin();
                }
            }
            _ => {}
        }
        true
    }

    /// Draws everything in the frame's current size.
    pub fn render(&mut self, f: &mut Frame) {
        let area = f.area();
        if area.width == 0 || area.height == 0 {
            return;
        }
        let [status, title, table, help] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Length(1),
            Constraint::Min(0),
            Constraint::Length(1),
        ])
        .areas(area);
        f.render_widget(Paragraph::new(self.status_lines()), status);
        let v = self.view;
        let (cols, rows) = self.rows(v);
        f.render_widget(Paragraph::new(self.title_line(&cols, rows.len())), title);
        self.render_table(f, table, &cols, &rows);
        f.render_widget(Paragraph::new(self.help_line(help.width)), help);
        if self.help {
            self.render_help(f, area);
        }
    }

    fn status_lines(&self) -> Vec<Line<'static>> {
        let sep = || Span::styled(" │ ", Style::new().fg(Color::DarkGray));
        let mut l1 = Vec::new();
        if self.paused {
            l1.push(Span::styled(
                "PAUSED ",
                Style::new().fg(Color::Black).bg(Color::Yellow),
            ));
            l1.push(Span::raw(" "));
        }
        if let Some(e) = &self.error {
            l1.push(Span::styled(
                format!("! {e}"),
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ));
            l1.push(sep());
        }
        let Some(s) = &self.snap else {
            l1.push(Span::raw("waiting for the first snapshot"));
            l1.push(sep());
            l1.push(Span::raw(self.describe.clone()));
            return vec![Line::from(l1)];
        };
        l1.push(Span::styled(
            fmt::datetime(s.time_ns),
            Style::new().add_modifier(Modifier::BOLD),
        ));
        if s.time_ns >= s.started_ns && s.started_ns > 0 {
            l1.push(Span::raw(format!(
                ", up {}",
                fmt::uptime((s.time_ns - s.started_ns) / 1_000_000_000)
            )));
        }
        l1.push(sep());
        l1.push(Span::raw(self.describe.clone()));
        let t = &s.totals;
        let up = |x: f64| format!("↑{}", fmt::rate(x));
        let down = |x: f64| format!("↓{}", fmt::rate(x));
        let l2 = vec![
            Span::raw(format!("1s {} {}", up(t.rate.tx_1s), down(t.rate.rx_1s))),
            sep(),
            Span::raw(format!("10s {} {}", up(t.rate.tx_10s), down(t.rate.rx_10s))),
            sep(),
            Span::raw(format!(
                "total ↑{} ↓{}",
                fmt::bytes(t.traffic.tx_bytes),
                fmt::bytes(t.traffic.rx_bytes)
            )),
        ];
        let mut l3 = vec![
            Span::raw(format!("{} open flows ({} seen)", t.open_flows, t.flows)),
            sep(),
        ];
        let blocked = format!("{} blocked", t.blocked);
        l3.push(if t.blocked > 0 {
            Span::styled(blocked, Style::new().fg(Color::Red))
        } else {
            Span::raw(blocked)
        });
        if let Some(r) = &s.rules {
            l3.push(sep());
            l3.push(Span::raw(format!(
                "{} rules (generation {})",
                r.rules, r.generation
            )));
            if r.last_outcome == "refused" {
                l3.push(Span::styled(
                    format!(
                        " (reload refused at {}: {})",
                        fmt::time_of_day(&r.last_time),
                        r.last_error.as_deref().unwrap_or("no reason given")
                    ),
                    Style::new().fg(Color::Red),
                ));
            }
        }
        if let Some(lost) = s.stats.get("events_lost") {
            l3.push(sep());
            let lost_n = lost.as_u64().unwrap_or(0);
            let text = format!("events lost {lost}");
            l3.push(if lost_n > 0 {
                Span::styled(text, Style::new().fg(Color::Red))
            } else {
                Span::raw(text)
            });
        }
        vec![Line::from(l1), Line::from(l2), Line::from(l3)]
    }

    fn title_line(&self, cols: &[Col], n: usize) -> Line<'static> {
        let v = self.view;
        let mut spans = vec![];
        let name = match (v, &self.conn_of) {
            (View::Connections, Some(c)) => format!("connections of {}", c.title),
            _ => v.name().to_string(),
        };
        spans.push(Span::styled(
            format!(" {name} ({n})"),
            Style::new().add_modifier(Modifier::BOLD),
        ));
        let (at, desc) = self.sort_of(v, cols);
        spans.push(Span::raw(format!(
            "  sort {} {}",
            cols[at].title,
            if desc { "▼" } else { "▲" }
        )));
        if v == View::Processes && self.tree {
            spans.push(Span::styled("  tree", Style::new().fg(Color::Cyan)));
        }
        if self.cumulative {
            spans.push(Span::styled("  cumulative", Style::new().fg(Color::Cyan)));
        }
        if self.editing || !self.filter.is_empty() {
            let cursor = if self.editing { "▏" } else { "" };
            spans.push(Span::styled(
                format!("  filter: {}{cursor}", self.filter),
                Style::new().fg(Color::Yellow),
            ));
        }
        Line::from(spans)
    }

    /// The keys that fit in `width`, the most useful first.
    fn help_line(&self, width: u16) -> Line<'static> {
        let back = match self.view {
            View::Processes if self.filter.is_empty() => ("", "", None),
            View::Processes => ("Esc", "clear filter", None),
            _ => ("Esc", "back", Some(View::Processes)),
        };
        let keys: [(&str, &str, Option<View>); 14] = [
            ("?", "help", None),
            ("q", "quit", None),
            ("c", "conns", Some(View::Connections)),
            ("r", "remotes", Some(View::Remotes)),
            ("p", "ports", Some(View::Ports)),
            ("b", "blocked", Some(View::Blocked)),
            back,
            ("/", "filter", None),
            ("s", "sort", None),
            ("i", "reverse", None),
            ("␣", "pause", None),
            ("t", "tree", None),
            ("a", "totals", None),
            ("Tab", "next view", None),
        ];
        let mut spans = Vec::new();
        let mut used = 0usize;
        for (k, what, v) in keys {
            let n = k.chars().count() + what.chars().count() + 2;
            if k.is_empty() || used + n > width as usize + 1 {
                continue;
            }
            used += n;
            let style = if v == Some(self.view) {
                Style::new().add_modifier(Modifier::REVERSED)
            } else {
                Style::new()
            };
            spans.push(Span::styled(format!("{k}:"), Style::new().fg(Color::Cyan)));
            spans.push(Span::styled(what.to_string(), style));
            spans.push(Span::raw(" "));
        }
        Line::from(spans)
    }

    fn render_table(&mut self, f: &mut Frame, area: Rect, cols: &[Col], rows: &[Row]) {
        if area.height == 0 {
            return;
        }
        let v = self.view;
        let (at, desc) = self.sort_of(v, cols);
        const SPACING: u16 = 1;
        const SYMBOL: &str = ">";
        let widths = view::layout(cols, rows, area.width.saturating_sub(1), SPACING, at);
        let shown: Vec<usize> = (0..cols.len()).filter(|&i| widths[i].is_some()).collect();
        let header = TRow::new(shown.iter().map(|&i| {
            let c = &cols[i];
            let mut t = c.title.to_string();
            if i == at {
                t.push_str(if desc { "▼" } else { "▲" });
            }
            align(t, c.right)
        }))
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
        let body: Vec<TRow> = rows
            .iter()
            .map(|r| {
                TRow::new(shown.iter().map(|&i| {
                    let c = &cols[i];
                    let w = widths[i].unwrap_or(0) as usize;
                    let text = if c.flex {
                        let pre = r.prefix.chars().count();
                        if pre >= w {
                            fmt::fit(&r.prefix, w)
                        } else {
                            format!("{}{}", r.prefix, fmt::fit(&r.cells[i], w - pre))
                        }
                    } else {
                        fmt::fit(&r.cells[i], w)
                    };
                    align(text, c.right)
                }))
            })
            .collect();
        let constraints: Vec<Constraint> = shown
            .iter()
            .map(|&i| Constraint::Length(widths[i].unwrap_or(0)))
            .collect();
        let selected = self.resolve(v, rows);
        self.page = area.height.saturating_sub(1) as usize;
        let state = &mut self.states[v.index()];
        state.select(selected);
        let table = Table::new(body, constraints)
            .header(header)
            .column_spacing(SPACING)
            .highlight_symbol(SYMBOL)
            .highlight_spacing(HighlightSpacing::Always)
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        f.render_stateful_widget(table, area, state);
        if rows.is_empty() && area.height > 1 {
            let msg = if self.snap.is_none() {
                format!("waiting for data from {}", self.describe)
            } else if !self.filter.is_empty() {
                format!("nothing matches the filter \"{}\"", self.filter)
            } else if v == View::Connections && self.conn_of.is_some() {
                "no open connections".into()
            } else {
                v.empty().into()
            };
            let r = Rect {
                y: area.y + 1 + (area.height - 1) / 3,
                height: 1,
                ..area
            };
            f.render_widget(
                Paragraph::new(msg)
                    .alignment(Alignment::Center)
                    .style(Style::new().fg(Color::DarkGray)),
                r,
            );
        }
    }

    fn render_help(&self, f: &mut Frame, area: Rect) {
        let kw = KEYS
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut lines: Vec<Line> = KEYS
            .iter()
            .map(|(k, what)| {
                Line::from(vec![
                    Span::styled(format!("{k:>kw$}  "), Style::new().fg(Color::Cyan)),
                    Span::raw(*what),
                ])
            })
            .collect();
        lines.push(Line::raw(""));
        lines.push(Line::raw(
            "CONN: open connections, BLK: blocked attempts, TODAY: sent+received today",
        ));
        let w = (lines.iter().map(|l| l.width()).max().unwrap_or(0) as u16 + 4).min(area.width);
        let h = (lines.len() as u16 + 2).min(area.height);
        let r = Rect {
            x: area.x + (area.width - w) / 2,
            y: area.y + (area.height - h) / 2,
            width: w,
            height: h,
        };
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(Text::from(lines))
                .wrap(Wrap { trim: false })
                .block(
                    Block::new()
                        .borders(Borders::ALL)
                        .title(" procflow top: keys "),
                ),
            r,
        );
    }
}

fn align(text: String, right: bool) -> Cell<'static> {
    let l = Line::from(text);
    Cell::from(if right {
        l.alignment(Alignment::Right)
    } else {
        l
    })
}
