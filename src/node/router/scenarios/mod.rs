//! Scenario tests: whole meshes of routers driven by the simulator
//! (`sim/`), each a few lines that say what users do and what they see.
//! A scenario fails when the behaviour it names breaks: it asserts on what
//! users receive, and on what servers still hold.

mod abuse;
mod custody;
mod directory;
mod disk_state;
mod groups;
mod lookup;
mod mesh;
mod presence;
mod restart;
mod routing;
mod undecryptable;

use super::sim::Mesh;

/// The usual mesh: a master and two locals linked to it.
fn two_locals(seed: u64) -> Mesh {
    Mesh::new(seed)
        .master("M")
        .local("A")
        .local("B")
        .link("A", "M")
        .link("B", "M")
}

/// True if no server holds any content any more.
fn all_handed_on(mesh: &Mesh, nodes: &[&str]) -> bool {
    nodes
        .iter()
        .all(|n| mesh.custody(n) == 0 && mesh.rows(n) == 0)
}
