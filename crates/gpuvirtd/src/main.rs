//! gpuvirtd (work in progress).

fn main() {}
