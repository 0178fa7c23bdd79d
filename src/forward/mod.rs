//! Forwarding: every stored event that matches a subscription is delivered to
//! its URL (HTTP, or a broker: see [`destinations`]), signed (Standard Webhooks), retried on a schedule, recorded, and
//! replayable. The outbox rows are written with the event (see `store`); the
//! [`worker`] drains them.

pub mod address;
pub mod destinations;
pub mod filter;
pub mod health;
pub mod policy;
pub mod shaping;
pub mod signing;
pub mod subscription;
pub mod template;
pub mod worker;

pub use policy::RetrySchedule;
pub use subscription::{Subscription, SubscriptionInput};
pub use worker::{ForwardConfig, Forwarder};
