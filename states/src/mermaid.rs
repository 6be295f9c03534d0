//! Renders the transition table as a mermaid `stateDiagram-v2`.

use std::fmt::Write;

use crate::status::StateKind;
use crate::table::{TRANSITIONS, Target};

/// The diagram, one line per edge, in table order.
pub fn state_diagram() -> String {
    let mut out = String::from("stateDiagram-v2\n");
    let _ = writeln!(out, "    [*] --> {}", StateKind::Empty.name());
    for edge in TRANSITIONS {
        let to = match edge.target {
            Target::To(to) => to,
            Target::Stay => edge.from,
        };
        let _ = write!(
            out,
            "    {} --> {}: {}",
            edge.from.name(),
            to.name(),
            edge.on.name()
        );
        if !edge.note.is_empty() {
            let _ = write!(out, " ({})", edge.note);
        }
        out.push('\n');
    }
    let _ = writeln!(out, "    {} --> [*]", StateKind::Terminated.name());
    out
}
