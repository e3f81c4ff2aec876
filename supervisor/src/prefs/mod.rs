//! Computing preferences, as BOINC's: when this machine lends its CPU. On battery, while
//! its owner's programs are busy, outside the hours given, or with its disk nearly full,
//! no new job starts; jobs in flight finish and the children stay loaded, so resuming
//! costs nothing. `server` applies the pause (`server::intake::prefer`).
//!
//! - `settings`: the preferences, the config file and the flags;
//! - `decide`: the decision, a pure function with hysteresis;
//! - `power`, `load`: the readings (battery, other programs' CPU);
//! - `monitor`: the readings on a timer, the file re-read, the decision published.

pub mod decide;
pub mod load;
pub mod monitor;
pub mod power;
pub mod settings;
