//! Work on a whole database, beside the live path: loading recorded traffic
//! ([`import`]), moving an install between databases ([`copy`]), and dropping old
//! raw bodies ([`retention`], also run hourly by `serve --retain-events`), and
//! reconciling with Thinkific's REST API on a schedule ([`reconcile`]).

pub mod copy;
pub mod import;
pub mod milestones;
pub mod reconcile;
pub mod retention;
