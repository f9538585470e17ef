//! [`RateLimitLayer`]: applies a [`Limiter`] to a service.

use std::fmt;

use tower_layer::Layer;

use crate::engine::Scope;
use crate::limiter::Limiter;
use crate::service::RateLimit;

/// Applies a [`Limiter`]'s central table ([`Limiter::layer`]) or one per-route policy
/// ([`Limiter::policy_at`]) to a service. Clones share the limiter's state.
///
/// ```
/// use axum::{routing::{get, post}, Router};
/// use tollgate::{Limiter, Policy};
///
/// # async fn chat() {} async fn list() {}
/// let limiter = Limiter::builder()
///     .route("/api/*", Policy::named("default").per_ip("500/min"))
///     .build()?;
/// let app: Router = Router::new()
///     .route("/api/assistant/chat", post(chat).layer(limiter.try_policy_at(
///         "POST /api/assistant/chat",
///         Policy::named("chat").per_ip("60/min"),
///     )?))
///     .route("/api/items", get(list))
///     .layer(limiter.layer());
/// # Ok::<(), tollgate::BuildError>(())
/// ```
#[derive(Clone)]
#[must_use = "a layer limits nothing until it wraps a service (`.layer(limiter.layer())`)"]
pub struct RateLimitLayer {
    limiter: Limiter,
    scope: Scope,
}

impl RateLimitLayer {
    pub(crate) fn central(limiter: Limiter) -> Self {
        Self {
            limiter,
            scope: Scope::Central,
        }
    }

    pub(crate) fn route(
        limiter: Limiter,
        index: usize,
        name: std::sync::Arc<str>,
        pattern: Option<std::sync::Arc<crate::engine::Delegation>>,
    ) -> Self {
        Self {
            limiter,
            scope: Scope::Route {
                index,
                name,
                pattern,
            },
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        if let Scope::Route {
            pattern: Some(delegation),
            ..
        } = &self.scope
        {
            delegation.attach();
        }
        RateLimit::new(inner, self.limiter.clone(), self.scope.clone())
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .field("scope", &self.scope)
            .finish()
    }
}
