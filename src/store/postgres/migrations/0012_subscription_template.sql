-- A subscription may carry a template (JSON TemplateSpec, see
-- forward/template.rs): what it sends instead of Thinkific's body.
-- NULL: the body as Thinkific sent it.
ALTER TABLE subscriptions ADD COLUMN template jsonb;
