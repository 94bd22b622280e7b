//! Times building and ordering a random DAG from Rust strings (no Python):
//! `cargo run --release --example order_random -- 1000000 2000000`
use std::time::Instant;

use core_rs::dag::DagBuilder;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let nodes = args.next().unwrap_or(1_000_000);
    let edges = args.next().unwrap_or(2_000_000);
    let mut state = 7u64;
    let mut rand = move |m: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    let ids: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
    let pairs: Vec<(usize, usize)> = (0..edges)
        .map(|_| {
            let (a, b) = (rand(nodes), rand(nodes));
            (a.min(b), a.max(b).max(a.min(b) + 1).min(nodes - 1))
        })
        .filter(|(a, b)| a < b)
        .collect();
    let start = Instant::now();
    let mut builder = DagBuilder::with_capacity(nodes, pairs.len());
    for id in &ids {
        builder.add_node(id).unwrap();
    }
    let added = start.elapsed();
    for &(a, b) in &pairs {
        builder.add_edge(&ids[a], &ids[b]).unwrap();
    }
    let linked = start.elapsed();
    let dag = builder.build().unwrap();
    let built = start.elapsed();
    println!(
        "{} nodes, {} edges: add nodes {:?}, add edges {:?}, build+order {:?}, total {:?}",
        dag.len(),
        dag.edge_count(),
        added,
        linked - added,
        built - linked,
        built
    );
}
