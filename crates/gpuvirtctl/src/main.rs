//! gpuvirtctl (work in progress).

fn main() {}
