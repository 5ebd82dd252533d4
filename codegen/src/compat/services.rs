//! Wire rules for RPC services: methods must stay, with their request and response types.

use super::{Findings, or_waive};
use crate::compat::Rule;

pub(super) fn check(f: &mut Findings<'_>) {
    for (name, old) in &f.baseline.services {
        let Some(new) = f.current.services.get(name) else {
            for method in old.methods.keys() {
                f.report(
                    Rule::MethodRemoved,
                    &old.location,
                    name,
                    format!("rpc {name}.{method} was removed with service {name}"),
                    format!(
                        "keep the service until no caller uses it; {}",
                        or_waive(Rule::MethodRemoved, "the file it was in (at its top)")
                    ),
                );
            }
            continue;
        };
        for (method, old_method) in &old.methods {
            let Some(new_method) = new.methods.get(method) else {
                f.report(
                    Rule::MethodRemoved,
                    &new.location,
                    name,
                    format!("rpc {name}.{method} was removed"),
                    format!(
                        "keep the rpc (answer it from the server) until no caller uses it; {}",
                        or_waive(Rule::MethodRemoved, &format!("service {name}"))
                    ),
                );
                continue;
            };
            for (what, before, after) in [
                ("request", &old_method.request, &new_method.request),
                ("response", &old_method.response, &new_method.response),
            ] {
                if before != after {
                    f.report(
                        Rule::MethodTypeChanged,
                        new_method.location.as_ref().unwrap_or(&new.location),
                        name,
                        format!("rpc {name}.{method} now takes {what} {after} (was {before})"),
                        format!(
                            "keep {before} and add fields to it, or add a new rpc with the new types; {}",
                            or_waive(Rule::MethodTypeChanged, &format!("service {name}"))
                        ),
                    );
                }
            }
        }
    }
}
