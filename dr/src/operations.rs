//! Failover, failback and drills (`yiyun dr failover|failback|drill`).
