//! Injected faults of the AlloyDB doubles, with the [`Fault`] kinds of the Google doubles: per
//! target, a queue whose front fault applies to the next request(s) until its count is used up.
//!
//! On the Admin API a `Status` fault answers that HTTP status in Google's error shape (with
//! `Retry-After` when set), `Delay` sleeps first, `Reject` answers the permission denial. On
//! the instance, `Delay` holds the metadata exchange answer back, and `Status` and `Reject`
//! refuse the exchange with `ERROR`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::faults::Fault;

/// Which AlloyDB double a fault is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Both Admin API methods.
    Admin,
    /// The metadata exchange of new instance connections.
    Instance,
}

fn count_mut(fault: &mut Fault) -> &mut u32 {
    match fault {
        Fault::Status { count, .. } | Fault::Delay { count, .. } | Fault::Reject { count } => count,
    }
}

/// The queues of both targets.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    admin: VecDeque<Fault>,
    instance: VecDeque<Fault>,
}

impl Queues {
    fn queue(&mut self, target: Target) -> &mut VecDeque<Fault> {
        match target {
            Target::Admin => &mut self.admin,
            Target::Instance => &mut self.instance,
        }
    }

    /// Appends `fault` behind those already queued for `target`; a zero count is dropped.
    pub fn push(&mut self, target: Target, mut fault: Fault) {
        if *count_mut(&mut fault) > 0 {
            self.queue(target).push_back(fault);
        }
    }

    /// The fault for the request arriving now, with a count of 1, using up one of its count.
    pub fn take(&mut self, target: Target) -> Option<Fault> {
        let queue = self.queue(target);
        let front = queue.front_mut()?;
        let count = count_mut(front);
        *count -= 1;
        let mut fault = if *count == 0 {
            queue.pop_front()?
        } else {
            front.clone()
        };
        *count_mut(&mut fault) = 1;
        Some(fault)
    }

    pub fn pending(&self, target: Target) -> Vec<Fault> {
        match target {
            Target::Admin => self.admin.iter().cloned().collect(),
            Target::Instance => self.instance.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_apply_in_order_per_target_and_count_down() {
        let mut queues = Queues::default();
        queues.push(Target::Admin, Fault::Reject { count: 2 });
        queues.push(
            Target::Admin,
            Fault::Delay {
                millis: 5,
                count: 1,
            },
        );
        queues.push(Target::Instance, Fault::Reject { count: 0 });
        assert_eq!(queues.take(Target::Instance), None);
        assert_eq!(queues.take(Target::Admin), Some(Fault::Reject { count: 1 }));
        assert_eq!(queues.pending(Target::Admin)[0], Fault::Reject { count: 1 });
        assert_eq!(queues.take(Target::Admin), Some(Fault::Reject { count: 1 }));
        assert!(matches!(
            queues.take(Target::Admin),
            Some(Fault::Delay { millis: 5, .. })
        ));
        assert_eq!(queues.take(Target::Admin), None);
    }
}
