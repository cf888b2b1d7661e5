//! The proxy-wasm shell: the only module that talks to the host. It reads what Envoy gives,
//! asks the core ([`crate::decide`]) and carries out the verdict. A decision about policy does
//! not belong here; it belongs in the core.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::policy::{decide, Policy};
use crate::request::Request;
use crate::verdict::{Verdict, REPLY_CONTENT_TYPE};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { policy: None }) });
}}

/// One per plugin configuration and VM. Holds the compiled policy, shared with every stream.
struct Root {
    /// `None` until a configuration compiled. Streams then refuse upgrades (fail closed).
    policy: Option<Rc<Policy>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let json = self.get_plugin_configuration().unwrap_or_default();
        match Policy::from_json(&json) {
            Ok(policy) => {
                log::info!("configuration loaded: {}", policy.summary());
                self.policy = Some(Rc::new(policy));
                true
            }
            Err(error) => {
                // Returning false makes Envoy refuse this configuration; a policy loaded earlier
                // (if any) keeps serving.
                log::error!("configuration rejected: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            policy: self.policy.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One per HTTP request (and, after an upgrade, per WebSocket).
struct Stream {
    policy: Option<Rc<Policy>>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The bytes form: header values need not be UTF-8, and the SDK's String form would
        // panic on one that is not.
        let request = Request::new(self.get_http_request_headers_bytes());
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or_default();
        match decide(self.policy.as_deref(), &request, now) {
            Verdict::Pass | Verdict::Admit => Action::Continue,
            Verdict::Deny(denial) => {
                log::warn!("{}", denial.log_line(&request));
                self.send_http_response(
                    u32::from(denial.status),
                    vec![("content-type", REPLY_CONTENT_TYPE)],
                    Some(denial.body.as_bytes()),
                );
                Action::Pause
            }
        }
    }
}
