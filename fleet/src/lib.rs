//! The fleet, server side: hosts and their enrollment, labels and assignment rules, inventories
//! and pending updates, approvals, commands. The agent protocol's types are in
//! `aptgate_agent::protocol`.
