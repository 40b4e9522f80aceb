//! Integration tests of Studio Drive live in `tests/*.rs`; this library is empty so that the
//! package has a target of its own.
