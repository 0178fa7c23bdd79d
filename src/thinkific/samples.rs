//! Thinkific's published sample deliveries, verbatim, for `enrollhook send` and tests.

pub const CREATED: &str = include_str!("samples/enrollment.created.json");
pub const PROGRESS: &str = include_str!("samples/enrollment.progress.json");
pub const COMPLETED: &str = include_str!("samples/enrollment.completed.json");
pub const LESSON_COMPLETED: &str = include_str!("samples/lesson.completed.json");
pub const ORDER_CREATED: &str = include_str!("samples/order.created.json");
pub const USER_SIGNUP: &str = include_str!("samples/user.signup.json");

/// A built-in sample by short name (`created`, `progress`, `completed`, `lesson`,
/// `order`, `signup`) or by its topic.
pub fn by_name(name: &str) -> Option<&'static str> {
    match name {
        "created" | "enrollment.created" => Some(CREATED),
        "progress" | "enrollment.progress" => Some(PROGRESS),
        "completed" | "enrollment.completed" => Some(COMPLETED),
        "lesson" | "lesson.completed" => Some(LESSON_COMPLETED),
        "order" | "order.created" => Some(ORDER_CREATED),
        "signup" | "user.signup" => Some(USER_SIGNUP),
        _ => None,
    }
}
