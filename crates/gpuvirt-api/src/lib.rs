//! The gpuvirt D-Bus contract: names, error names, wire types and proxies.
