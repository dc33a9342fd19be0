//! The husk agent API.
