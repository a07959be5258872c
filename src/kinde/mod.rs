//! Kinde Management API client.
