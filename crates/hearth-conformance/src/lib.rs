//! hearth-conformance (work in progress)
