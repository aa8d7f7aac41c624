//! A resource whose `open` failed. It stays in the monitor, `failed` with
//! the reason, while every other resource runs; its next `online` (an
//! operator's, or the retry after `retry_period_on_failure`) tries the open
//! again, on the entry point's worker thread, and once that succeeds every
//! entry point goes to the opened resource.

use resmon_contract::{
    CallContext, Completion, ControlError, OpenContext, Resource, ResourceError, ResourceType,
};
use resmon_task::lock;
use std::sync::{Arc, Mutex};

pub struct Reopening {
    /// What opens it, or why it cannot be opened at all (its container
    /// could not be made).
    opener: Result<(Arc<dyn ResourceType>, OpenContext), String>,
    opened: Mutex<Option<Arc<dyn Resource>>>,
}

impl Reopening {
    pub fn new(ty: Arc<dyn ResourceType>, ctx: OpenContext) -> Self {
        Reopening {
            opener: Ok((ty, ctx)),
            opened: Mutex::new(None),
        }
    }

    /// A resource that cannot be opened in this run: every `online` fails
    /// with `why`.
    pub fn broken(why: String) -> Self {
        Reopening {
            opener: Err(why),
            opened: Mutex::new(None),
        }
    }

    fn opened(&self) -> Option<Arc<dyn Resource>> {
        lock(&self.opened).clone()
    }

    /// The opened resource, opening it now if it is not yet.
    fn open(&self) -> Result<Arc<dyn Resource>, ResourceError> {
        if let Some(r) = self.opened() {
            return Ok(r);
        }
        let (ty, ctx) = self
            .opener
            .as_ref()
            .map_err(|why| ResourceError::new(why.clone()))?;
        let opened: Arc<dyn Resource> = Arc::from(
            ty.open(ctx.clone())
                .map_err(|e| ResourceError::new(format!("open failed: {}", e.0)))?,
        );
        *lock(&self.opened) = Some(opened.clone());
        Ok(opened)
    }
}

impl Resource for Reopening {
    fn online(&self, ctx: &CallContext) -> Result<Completion, ResourceError> {
        self.open()?.online(ctx)
    }

    fn offline(&self, ctx: &CallContext) -> Result<Completion, ResourceError> {
        match self.opened() {
            Some(r) => r.offline(ctx),
            None => Ok(Completion::Done),
        }
    }

    fn terminate(&self, exit_code: i32) {
        if let Some(r) = self.opened() {
            r.terminate(exit_code);
        }
    }

    fn terminate_is_cheap(&self) -> bool {
        self.opened().is_none_or(|r| r.terminate_is_cheap())
    }

    fn looks_alive(&self) -> bool {
        self.opened().is_some_and(|r| r.looks_alive())
    }

    fn is_alive(&self) -> bool {
        self.opened().is_some_and(|r| r.is_alive())
    }

    fn cancel_check(&self) {
        if let Some(r) = self.opened() {
            r.cancel_check();
        }
    }

    fn resource_control(&self, code: u32, input: &[u8]) -> Result<Vec<u8>, ControlError> {
        match self.opened() {
            Some(r) => r.resource_control(code, input),
            None => Err(ControlError::NotSupported),
        }
    }

    fn close(&self) {
        if let Some(r) = self.opened() {
            r.close();
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.opened().map(|r| r.pids()).unwrap_or_default()
    }

    fn exit_code(&self) -> Option<i32> {
        self.opened().and_then(|r| r.exit_code())
    }

    fn detail(&self) -> Option<String> {
        self.opened().and_then(|r| r.detail())
    }

    fn persist(&self) -> Option<serde_json::Value> {
        self.opened().and_then(|r| r.persist())
    }
}
