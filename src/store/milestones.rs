//! What a store needs to derive milestones (`projection::milestones`): the
//! rules in force, swappable while serving, and a signal that some wait to
//! be moved into the log (SQLite derives them on its projector thread).

use std::sync::{Arc, RwLock};

use crate::projection::milestones::MilestoneRules;

#[derive(Default)]
pub struct RulesCell {
    rules: RwLock<Arc<MilestoneRules>>,
    /// SQLite: the projector kept milestones to move into the log.
    pub(crate) pending: tokio::sync::Notify,
}

impl RulesCell {
    pub fn new(rules: MilestoneRules) -> RulesCell {
        RulesCell {
            rules: RwLock::new(Arc::new(rules)),
            pending: tokio::sync::Notify::new(),
        }
    }

    /// The rules now (cheap: an `Arc` clone).
    pub fn rules(&self) -> Arc<MilestoneRules> {
        self.rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, rules: MilestoneRules) {
        *self
            .rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(rules);
    }
}
