//! Renders the transition table as a mermaid `stateDiagram-v2`.

use std::fmt::Write;

use crate::status::StateKind;
use crate::table::{OBSERVED, TRANSITIONS, Target};

/// Where the committed diagram lives, relative to the workspace root.
pub const DIAGRAM_PATH: &str = "diagrams/compute-states.md";

/// The diagram, one line per edge, in table order, except that a state's monitor observations
/// (three self-loops each) are drawn as one `monitor` edge so the diagram stays readable. An
/// edge reads `Event (note) / Commands`.
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
        if !edge.commands.is_empty() {
            let names: Vec<_> = edge.commands.iter().map(|c| c.name()).collect();
            let _ = write!(out, " / {}", names.join(", "));
        }
        out.push('\n');
    }
    let _ = writeln!(out, "    {} --> [*]", StateKind::Terminated.name());
    out
}

/// The committed document: a title, a note that it is generated, the diagram.
pub fn document() -> String {
    format!(
        "# Compute states\n\nGenerated from `states/src/table.rs` by `make diagrams`: do not \
         edit by hand.\n\n```mermaid\n{}```\n",
        state_diagram()
    )
}

#[cfg(test)]
mod tests {
    /// The committed diagram is the one the code draws: `cargo test` fails on a stale file.
    #[test]
    fn committed_diagram_is_fresh() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(super::DIAGRAM_PATH);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == super::document(),
            "{} is stale: run `make diagrams`",
            path.display()
        );
    }
}
