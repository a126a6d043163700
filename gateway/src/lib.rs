//! realizar-gateway: the cluster front door. Placement of models over nodes
//! by weighted rendezvous hashing (`placement`), the per-request choice
//! among a model's owners (`routing`), and the hashes both rank by
//! (`hash`) — pure functions of membership and load, so gateway replicas
//! agree without shared state.

pub mod hash;
pub mod membership;
pub mod placement;
pub mod routing;
