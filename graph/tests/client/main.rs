//! The Graph client against the simulator, over real HTTP.

mod contacts;
mod directory;
mod faults;
mod helpers;
mod mail;
mod paging;
mod retries;
mod simulator;
mod tokens;
