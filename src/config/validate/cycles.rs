//! Cycles among images (`from`) and environments (`after`): one diagnostic per cycle,
//! naming every member in order with a label on each edge.
//!
//! [`find_cycles`] is imgraph's one cycle finder: the stage graph uses it too, to name the
//! stages of a cycle that validation let through. It lives here, below the graph, because
//! the graph is built from the validated config (the graph using it adds no import circle).

use std::collections::HashMap;

use miette::SourceSpan;

use super::V;

impl V<'_> {
    /// One diagnostic per cycle among `names`: every node on it named in order, a label
    /// on each edge (`a` `relation` `b`).
    pub(super) fn report_cycles(
        &mut self,
        names: &[&str],
        edges: &[(usize, usize, SourceSpan)],
        what: &str,
        relation: &str,
        help: &str,
    ) {
        let pairs: Vec<(usize, usize)> = edges.iter().map(|&(a, b, _)| (a, b)).collect();
        for cycle in find_cycles(names.len(), &pairs) {
            let path = cycle_names(names, &pairs, &cycle).join(" -> ");
            let mut labels = cycle.iter().map(|&e| {
                let (a, b, span) = edges[e];
                (span, format!("`{}` {relation} `{}`", names[a], names[b]))
            });
            let Some((span, label)) = labels.next() else {
                continue;
            };
            let mut d = self
                .diags
                .error("cycle", span, format!("{what} form a cycle: {path}"), label)
                .help(help.to_string());
            for (span, label) in labels {
                d = d.label(span, label);
            }
        }
    }
}

/// One cycle (as indices into `edges`, in order) per strongly connected component of the
/// graph of `nodes` nodes and `edges` (`(from, to)`) that has one. Each starts at its
/// lowest-numbered node (the one declared first) and is a shortest way back to it.
pub fn find_cycles(nodes: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut graph = petgraph::graph::DiGraph::<(), usize>::new();
    let ids: Vec<_> = (0..nodes).map(|_| graph.add_node(())).collect();
    for (i, &(a, b)) in edges.iter().enumerate() {
        graph.add_edge(ids[a], ids[b], i);
    }
    let mut found = Vec::new();
    for component in petgraph::algo::tarjan_scc(&graph) {
        let members: Vec<usize> = component.iter().map(|n| n.index()).collect();
        let Some(&start) = members.iter().min() else {
            continue;
        };
        if members.len() == 1 {
            if let Some(e) = edges.iter().position(|&(a, b)| a == start && b == start) {
                found.push(vec![e]);
            }
            continue;
        }
        // Breadth-first search inside the component for the shortest way back to `start`.
        let mut via: HashMap<usize, usize> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closing = None;
        'search: while let Some(at) = queue.pop_front() {
            for (e, &(a, b)) in edges.iter().enumerate() {
                if a != at || !members.contains(&b) {
                    continue;
                }
                if b == start {
                    closing = Some(e);
                    break 'search;
                }
                if let std::collections::hash_map::Entry::Vacant(slot) = via.entry(b) {
                    slot.insert(e);
                    queue.push_back(b);
                }
            }
        }
        let Some(mut e) = closing else { continue };
        let mut path = vec![e];
        while edges[e].0 != start {
            let Some(&prev) = via.get(&edges[e].0) else {
                break;
            };
            path.push(prev);
            e = prev;
        }
        path.reverse();
        found.push(path);
    }
    found.sort_by_key(|c| c.first().map(|&e| edges[e].0));
    found
}

/// The names of the nodes on `cycle` (one of [`find_cycles`]), in order, the first again
/// at the end: `a -> b -> c -> a` once joined.
pub fn cycle_names<'n>(
    names: &[&'n str],
    edges: &[(usize, usize)],
    cycle: &[usize],
) -> Vec<&'n str> {
    let mut parts: Vec<&str> = cycle.iter().map(|&e| names[edges[e].0]).collect();
    if let Some(&first) = parts.first() {
        parts.push(first);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(names: &[&str], edges: &[(usize, usize)], cycle: &[usize]) -> String {
        cycle_names(names, edges, cycle).join(" -> ")
    }

    #[test]
    fn finds_every_node_of_a_cycle_in_order() {
        let names = ["a", "b", "c", "d"];
        // d -> a is a way into the cycle, not part of it.
        let edges = [(0, 1), (1, 2), (2, 0), (3, 0)];
        let found = find_cycles(4, &edges);
        assert_eq!(found.len(), 1);
        assert_eq!(path(&names, &edges, &found[0]), "a -> b -> c -> a");
    }

    #[test]
    fn finds_self_loops_and_ignores_acyclic_graphs() {
        let names = ["a", "b"];
        let edges = [(0, 1), (1, 1)];
        let found = find_cycles(2, &edges);
        assert_eq!(found.len(), 1);
        assert_eq!(path(&names, &edges, &found[0]), "b -> b");
        assert!(find_cycles(2, &[(0, 1)]).is_empty());
    }

    #[test]
    fn finds_one_shortest_cycle_per_component() {
        let names = ["a", "b", "c", "d", "e"];
        // a -> b -> c -> a with the shortcut b -> a; d <-> e apart.
        let edges = [(0, 1), (1, 2), (2, 0), (1, 0), (3, 4), (4, 3)];
        let found = find_cycles(5, &edges);
        let paths: Vec<String> = found.iter().map(|c| path(&names, &edges, c)).collect();
        assert_eq!(paths, ["a -> b -> a", "d -> e -> d"]);
    }
}
