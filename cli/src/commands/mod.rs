//! One module per command group.

pub mod doctor;
pub mod exec;
pub mod migrate;
pub mod servers;
pub mod tenants;
