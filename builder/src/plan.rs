//! Text rendering of a build plan for `kiln build --dry-run`.

use std::collections::BTreeMap;
use std::fmt::Write;

use kiln_frontend::convert::{Base, Plan};
use kiln_frontend::instructions::Dockerfile;
use kiln_ops::{VertexId, describe};

/// Renders stages, vertices (with dependencies) and the levels that can run in parallel.
pub fn render(plan: &Plan, df: &Dockerfile, file: &str) -> String {
    let mut s = String::new();
    let target = plan.target_stage();
    let label = |i: usize| -> String {
        match &df.stages[i].name {
            Some(n) => format!("{i} ({n})"),
            None => i.to_string(),
        }
    };
    let _ = writeln!(
        s,
        "target stage {} of {} stages; {} needed, {} vertices",
        label(target.index),
        df.stages.len(),
        plan.stages.len(),
        plan.graph.len()
    );
    let _ = writeln!(s, "\nstages:");
    for st in &plan.stages {
        let base = match &st.base {
            Base::Scratch => "scratch".to_string(),
            Base::Context(name) => format!("context {name}"),
            Base::Image { reference, .. } => format!("image {reference}"),
            Base::Stage(i) => format!("stage {}", label(*i)),
        };
        let deps: Vec<String> = st.depends_on.iter().map(|d| label(*d)).collect();
        let _ = writeln!(
            s,
            "  stage {} FROM {base} [{}] at {file}:{}{}",
            label(st.index),
            st.platform,
            st.range.start.line,
            if deps.is_empty() {
                String::new()
            } else {
                format!(", needs {}", deps.join(", "))
            }
        );
    }
    let order = plan.graph.topo_order();
    let numbers: BTreeMap<VertexId, usize> = order
        .iter()
        .enumerate()
        .map(|(n, id)| (*id, n + 1))
        .collect();
    let _ = writeln!(s, "\nvertices:");
    for id in &order {
        let v = plan.graph.vertex(*id);
        let what = match v.origins.first() {
            Some(o) => format!(
                "[{}] {} ({file}:{})",
                o.stage_name,
                o.instruction.trim(),
                o.range.start.line
            ),
            None => describe(&v.op),
        };
        let deps: Vec<String> = v
            .inputs
            .iter()
            .map(|i| format!("#{}", numbers[i]))
            .collect();
        let _ = writeln!(
            s,
            "  #{:<3} {} {what}{}",
            numbers[id],
            &v.digest.hex()[..12],
            if deps.is_empty() {
                String::new()
            } else {
                format!("  <- {}", deps.join(" "))
            }
        );
    }
    let _ = writeln!(
        s,
        "\nparallel levels (vertices on one level can run at the same time):"
    );
    for (n, level) in plan.graph.levels().iter().enumerate() {
        let ids: Vec<String> = level.iter().map(|i| format!("#{}", numbers[i])).collect();
        let _ = writeln!(s, "  level {n}: {}", ids.join(" "));
    }
    s
}
