//! Renders the transition table as a mermaid `stateDiagram-v2`.

use std::fmt::Write;

use crate::status::StateKind;
use crate::table::{OBSERVED, TRANSITIONS, Target};

/// The diagram, one line per edge, in table order, except that a state's monitor observations
/// (three self-loops each) are drawn as one `monitor` edge so the diagram stays readable.
pub fn state_diagram() -> String {
    let mut out = String::from("stateDiagram-v2\n");
    let _ = writeln!(out, "    [*] --> {}", StateKind::Empty.name());
    let mut observing = Vec::new();
    for edge in TRANSITIONS {
        if edge.on.is_observation() && edge.target == Target::Stay {
            if !observing.contains(&edge.from) {
                observing.push(edge.from);
                let from = edge.from.name();
                let _ = writeln!(out, "    {from} --> {from}: monitor ({OBSERVED})");
            }
            continue;
        }
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
