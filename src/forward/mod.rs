//! Forwarding: every stored event that matches a subscription is delivered to
//! its URL, signed (Standard Webhooks), retried on a schedule, recorded, and
//! replayable. The outbox rows are written with the event (see `store`); the
//! [`worker`] drains them.

pub mod address;
pub mod filter;
pub mod health;
pub mod policy;
pub mod signing;
pub mod subscription;
pub mod template;
pub mod worker;

pub use policy::RetrySchedule;
pub use subscription::{Subscription, SubscriptionInput};
pub use worker::{ForwardConfig, Forwarder};
