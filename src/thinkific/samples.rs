//! Thinkific's published sample deliveries, verbatim, for `enrollhook send` and tests.

pub const CREATED: &str = include_str!("samples/enrollment.created.json");
pub const PROGRESS: &str = include_str!("samples/enrollment.progress.json");
pub const COMPLETED: &str = include_str!("samples/enrollment.completed.json");

/// A built-in sample by short name (`created`, `progress`, `completed`).
pub fn by_name(name: &str) -> Option<&'static str> {
    match name {
        "created" | "enrollment.created" => Some(CREATED),
        "progress" | "enrollment.progress" => Some(PROGRESS),
        "completed" | "enrollment.completed" => Some(COMPLETED),
        _ => None,
    }
}
