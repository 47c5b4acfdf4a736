//! Rebuild when a migration changes: they are embedded with `include_dir!`.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
