//! HTTP routes. Each handler turns guards into domain values with `?`, calls
//! the store once and shapes the response.

pub(crate) mod docs;
mod health;
mod legacy;
pub(crate) mod openapi;
mod users;

use rocket::Route;

pub fn all() -> Vec<Route> {
    [
        legacy::routes(),
        users::routes(),
        health::routes(),
        openapi::routes(),
    ]
    .concat()
}
