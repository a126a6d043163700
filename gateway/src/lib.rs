//! realizar-gateway: the cluster front door (consistent-hash placement of
//! models over nodes, routing, streaming proxy). Its modules land with the
//! gateway issue; the crate exists so the workspace has its final shape.
