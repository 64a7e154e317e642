# pgferry locally, with Terraform (1.11+) or OpenTofu: two PostgreSQL servers on
# this machine (source on 5432, target on 5433), a local agent, one migration.
#
#   npm ci && npm run build                          # at the repository root
#   node dist/agent/cli/main.js agent --listen 127.0.0.1:7443 --state-dir .pgferry &
#   export TF_CLI_CONFIG_FILE=$PWD/examples/terraform/dev.tfrc   # see ../README.md
#   cd examples/terraform/local
#   export TF_VAR_source_password=… TF_VAR_target_password=…
#   terraform plan                        # runs the agent's read-only preflight
#   terraform apply                       # starts the migration, waits until it is in sync
#   terraform apply -refresh-only         # phase, rows copied, lag
#   terraform apply -var cutover=true     # cuts over: active_endpoint becomes "target"
#   terraform destroy                     # drops the slot and publication; the target keeps its data

terraform {
  required_version = ">= 1.11" # passwords are write-only arguments: never in the plan or the state
  required_providers {
    pgferry = { source = "pgferry/pgferry" }
  }
}

variable "agent_endpoint" {
  type    = string
  default = "127.0.0.1:7443"
}
variable "agent_token" {
  type      = string
  default   = null
  sensitive = true
  # Set when the agent runs with --token-file.
}
variable "source_password" {
  type      = string
  sensitive = true
}
variable "target_password" {
  type      = string
  sensitive = true
}
variable "cutover" {
  type    = bool
  default = false
}

provider "pgferry" {
  endpoint = var.agent_endpoint
  token    = var.agent_token
}

resource "pgferry_migration" "shop" {
  migration_id = "shop"

  source {
    host     = "127.0.0.1"
    port     = 5432
    database = "shop"
    user     = "postgres"
    password = var.source_password
    ssl_mode = "disable"
  }
  target {
    host     = "127.0.0.1"
    port     = 5433
    database = "shop"
    user     = "postgres"
    password = var.target_password
    ssl_mode = "disable"
  }
  tables {
    include = ["public.*"]
  }

  wait_for_sync = true
  cutover       = var.cutover
}

output "phase" {
  value = pgferry_migration.shop.phase
}
output "rows_copied" {
  value = pgferry_migration.shop.rows_copied
}
output "lag_bytes" {
  value = pgferry_migration.shop.lag_bytes
}
output "active_endpoint" {
  value = pgferry_migration.shop.active_endpoint
}
output "outage_ms" {
  value = pgferry_migration.shop.outage_ms
}
# What an application would use: the source until the cutover completed, then
# the target (the password is not in the state: the application has its own).
output "database_host" {
  value = "${pgferry_migration.shop.active_connection.host}:${pgferry_migration.shop.active_connection.port}"
}
