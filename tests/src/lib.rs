//! Shared helpers for husk integration and end-to-end tests.
