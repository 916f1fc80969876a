-- +goose Up

-- The auditor role: a user who reads the event log (GET /api/v1/events)
-- for analysis and audit. The CHECK of 0005 named only user and admin.
ALTER TABLE auth_users DROP CONSTRAINT auth_users_role_check;
ALTER TABLE auth_users ADD CONSTRAINT auth_users_role_check
    CHECK (role IN ('user', 'admin', 'auditor'));
