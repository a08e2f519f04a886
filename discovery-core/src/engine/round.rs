//! One discovery round: the listing, the view built from it, the view published to peers, and
//! the probes the round needs.

use super::*;

impl FormationEngine {
    /// Lists, updates the view, publishes it, probes the candidates this round needs.
    pub(super) async fn round(&self, st: &mut RunState, attempt: u32) -> Result<Round, DiscoveryError> {
        let listing = self.discovery.list().await?;
        let mut view: BTreeSet<NodeName> = if listing.authoritative {
            BTreeSet::new()
        } else {
            self.note_absences(st, &listing);
            st.view
                .iter()
                .filter(|n| !self.departed(st, n))
                .cloned()
                .collect()
        };
        view.extend(listing.nodes.iter().cloned());
        if let Some(seed) = &listing.preferred_seed {
            view.insert(seed.clone());
        }
        view.insert(self.local.clone());
        if view != st.view {
            st.absent.retain(|n, _| view.contains(n));
            st.view = view;
            st.view_changed_at = Instant::now();
        }
        st.seed = listing
            .preferred_seed
            .clone()
            .or_else(|| st.view.first().cloned());
        self.publish(st);
        let timeout = self.config.probe_timeout;
        let member = self.membership.as_ref();
        let seed_only = self.seed_only(st, attempt);
        let mut first = match &seed_only {
            Some(seed) => vec![seed.clone()],
            None => {
                st.probed_all_at = Instant::now();
                st.peers(&self.local)
            }
        };
        // A committed node keeps probing its seed even when the backend stopped listing it.
        if let Some(v) = &st.commitment
            && v.seed != self.local
            && !first.contains(&v.seed)
        {
            first.push(v.seed.clone());
        }
        let mut probes = probe_all(member, &first, timeout).await;
        // A seed that announces an intent asks for a commitment, which on a listing that is not
        // authoritative needs every candidate's answer: the rest are probed in this same round.
        if let Some(seed) = seed_only
            && !listing.authoritative
            && st.commitment.is_none()
            && announces_intent(probes.get(&seed))
        {
            let rest: Vec<NodeName> = st.peers(&self.local).into_iter().filter(|p| *p != seed).collect();
            probes.extend(probe_all(member, &rest, timeout).await);
            st.probed_all_at = Instant::now();
        }
        self.note_answers(st, &probes);
        if tracing::enabled!(tracing::Level::DEBUG) {
            debug!(
                node = %self.local,
                "attempt {attempt}: the {} backend listed [{}]{}; answers: {}",
                self.discovery.name(),
                listing.nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                if listing.authoritative { " (authoritative)" } else { "" },
                describe_answers(&probes)
            );
        }
        Ok(Round { listing, probes })
    }

    /// Counts, for a non-authoritative listing, how many listings in a row each candidate of the
    /// view has been missing from (a listed candidate is no longer absent).
    pub(super) fn note_absences(&self, st: &mut RunState, listing: &DiscoveryResult) {
        let listed = |n: &NodeName| listing.nodes.contains(n) || listing.preferred_seed.as_ref() == Some(n);
        st.absent.retain(|n, _| !listed(n));
        let committed_seed = st.commitment.as_ref().map(|v| &v.seed);
        for n in st.view.iter() {
            if *n == self.local || listed(n) || Some(n) == committed_seed {
                continue;
            }
            st.absent
                .entry(n.clone())
                .and_modify(|a| a.listings += 1)
                .or_insert(Absence {
                    listings: 1,
                    since: Instant::now(),
                    unreachable: false,
                });
        }
    }

    /// Records what the absent candidates' probes said.
    pub(super) fn note_answers(&self, st: &mut RunState, probes: &BTreeMap<NodeName, Probe>) {
        for (n, p) in probes {
            if let Probe::Answered(info) = p {
                let idle = info.cluster.is_none() && info.view.as_ref().is_none_or(|v| v.intent.is_none());
                st.last_blank.insert(n.clone(), idle);
            }
        }
        // An answer restarts the count: only silence since then counts towards leaving.
        st.absent
            .retain(|n, _| !matches!(probes.get(n), Some(Probe::Answered(_))));
        for (n, a) in st.absent.iter_mut() {
            if matches!(probes.get(n), Some(Probe::Unreachable(_))) {
                a.unreachable = true;
            }
        }
    }

    /// A candidate that left: missing from [`DEPARTED_AFTER`] listings, unreachable when probed
    /// and silent meanwhile, for two retry intervals when its last answer in this run was blank
    /// without an intent, for `stable_margin` when it never answered (it may hold data, and a
    /// listing that is not authoritative is trusted to miss such a node for less than that), and
    /// never when it last answered from a cluster or with an intent (see docs/formation.md).
    pub(super) fn departed(&self, st: &RunState, node: &NodeName) -> bool {
        let departed = st.absent.get(node).is_some_and(|a| {
            let missing_for = a.since.elapsed();
            let long_enough = match st.last_blank.get(node) {
                Some(true) => missing_for >= self.config.discovery_retry_interval * 2,
                // Never heard: it may hold data, so it is kept as long as a listing may miss a
                // node that holds data (`stable_margin`, the non-authoritative assumption).
                None => {
                    missing_for
                        >= self
                            .config
                            .stable_margin
                            .max(self.config.discovery_retry_interval * 2)
                }
                Some(false) => false,
            };
            a.listings >= DEPARTED_AFTER && long_enough && a.unreachable
        });
        if departed {
            info!(
                node = %self.local,
                "candidate {node} left the view: missing from the last {DEPARTED_AFTER} listings and unreachable"
            );
        }
        departed
    }

    /// The seed, when this round may probe it alone: a blank non-seed without a lock, while its
    /// seed announces nothing, can only wait or join what the seed shows, so a formation costs
    /// about 2N probes per round instead of N². The safety argument this relies on: no decision
    /// that forms or commits trusts a partial round — forming and a standalone formation, and a
    /// commitment on a listing that is not authoritative, check in the decision that every
    /// candidate of the view answered in that round (`round` probes the rest when the seed
    /// announces). Everyone is probed too when it has seen a cluster the seed is not in, in the
    /// round that may spend the budget, and at least every [`PROBE_ALL_EVERY`] retry intervals.
    /// The seed itself always probes everyone (docs/formation.md, "Who probes whom").
    pub(super) fn seed_only(&self, st: &RunState, attempt: u32) -> Option<NodeName> {
        let seed = st.seed.clone()?;
        // The round that may spend the last of the budget probes everyone: a standalone
        // formation needs every candidate's answer.
        if attempt + 1 >= self.config.discovery_retry_limit {
            return None;
        }
        let lockless = self.discovery.formation_lock().is_none();
        let due = self
            .config
            .discovery_retry_interval
            .saturating_mul(PROBE_ALL_EVERY);
        // A cluster seen through the seed is joined through the seed; one seen elsewhere needs
        // every candidate's answer (to join it, or to learn that it is gone).
        let seed_side = st.seen.as_ref().is_none_or(|c| c.members.contains(&seed));
        (lockless && seed != self.local && seed_side && st.probed_all_at.elapsed() < due).then_some(seed)
    }

    /// Publishes the view for peers' probes and, when something a peer decides on changed,
    /// notices who must hear it: every candidate when this node is (or names no) seed, since its
    /// intent is what they commit to; otherwise the seed it names, which collects their views.
    pub(super) fn publish(&self, st: &mut RunState) {
        let view = FormationView {
            // A committed node names the seed it committed to, whatever its own view says.
            seed: match (&st.seen, &st.commitment) {
                (Some(_), _) => None,
                (None, Some(v)) => Some(v.seed.clone()),
                (None, None) => st.seed.clone(),
            },
            sees_cluster: st.seen.as_ref().map(|c| c.id.clone()),
            candidates: st.view.len(),
            unchanged_for: st.view_changed_at.elapsed(),
            intent: st.intent_announced.then(|| st.intent.clone()),
            committed: st.commitment.clone(),
            disk: Some(st.disk),
            disowned: st.disowned.clone(),
        };
        // What peers act on: the view without its age.
        let notable = FormationView {
            unchanged_for: Duration::ZERO,
            ..view.clone()
        };
        self.membership.publish_view(Some(view));
        if st.noticed.as_ref() == Some(&notable) {
            return;
        }
        let targets = match (&notable.seed, &notable.sees_cluster, &st.seed) {
            (Some(seed), _, _) if *seed != self.local => vec![seed.clone()],
            // A node that sees a cluster names no seed; the seed it would have named is the one
            // that must hear it (a seed collecting commitments withdraws). The other candidates
            // decide on their own probes: a notice to each of N peers from each of N joiners
            // would cost N² rounds.
            (None, Some(_), Some(seed)) if *seed != self.local => vec![seed.clone()],
            _ => st.peers(&self.local),
        };
        st.noticed = Some(notable);
        if !targets.is_empty() {
            self.membership.notify(&targets);
        }
    }
}

/// Whether a probe answer is a blank seed announcing an intent.
pub(super) fn announces_intent(probe: Option<&Probe>) -> bool {
    matches!(probe, Some(Probe::Answered(info))
        if info.cluster.is_none() && info.view.as_ref().is_some_and(|v| v.intent.is_some()))
}
