//! End-to-end tests of the API against a real MariaDB over real HTTP.
//! One binary, so that one throwaway server serves every test.

mod helpers;

mod conditional;
mod docs;
mod errors;
mod faults;
mod legacy;
mod lifecycle;
mod metrics;
mod openapi;
mod outages;
mod preflight;
mod proxy;
mod resource;
