//! Block data: object stores, block format, encryption.
