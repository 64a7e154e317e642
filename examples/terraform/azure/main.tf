# pgferry on Azure, with Terraform (1.11+) or OpenTofu: a flexible server (the
# target), its firewall rule for the agent, the database, the migration from
# a self-managed source, and a web app whose DATABASE_HOST follows the
# migration — the source until the cutover completed, then the new server.
#
# The cutover pull request sets `cutover = true` (here: -var cutover=true);
# removing the migration later drops the replication slot and publication on
# the source. The agent (`pgferry agent`) runs on a machine near the source.

terraform {
  required_version = ">= 1.11" # passwords and the token are write-only: never in the plan or the state
  required_providers {
    azurerm = { source = "hashicorp/azurerm", version = "~> 4.0" }
    pgferry = { source = "pgferry/pgferry" }
  }
}

provider "azurerm" {
  features {}
}

variable "location" {
  type    = string
  default = "westeurope"
}
variable "agent_ip" {
  type        = string
  description = "The public address the agent reaches the flexible server from."
}
variable "agent_endpoint" {
  type        = string
  description = "The agent's host:port (what `pgferry agent --listen` was given)."
}
variable "agent_token" {
  type      = string
  sensitive = true
}
variable "agent_ca_cert" {
  type        = string
  default     = null
  description = "PEM of the CA that signed the agent's TLS certificate."
}
variable "source_host" {
  type = string
}
variable "source_user" {
  type = string
}
variable "source_password" {
  type      = string
  sensitive = true
}
variable "source_owner_role" {
  type        = string
  default     = "postgres"
  description = "The role that owns the source's objects; mapped to the server's admin, which exists on the target."
}
variable "target_admin_password" {
  type      = string
  sensitive = true
}
variable "cutover" {
  type    = bool
  default = false
}

locals {
  database    = "orders"
  admin_login = "pgadmin"
}

# Several migrations share one agent: its endpoint, token and CA are set once here.
provider "pgferry" {
  endpoint = var.agent_endpoint
  token    = var.agent_token
  ca_cert  = var.agent_ca_cert
}

resource "azurerm_resource_group" "orders" {
  name     = "pgferry-orders"
  location = var.location
}

resource "azurerm_postgresql_flexible_server" "orders" {
  name                          = "orders-pg"
  resource_group_name           = azurerm_resource_group.orders.name
  location                      = azurerm_resource_group.orders.location
  version                       = "17"
  administrator_login           = local.admin_login
  administrator_password        = var.target_admin_password
  sku_name                      = "B_Standard_B1ms"
  storage_mb                    = 32768
  public_network_access_enabled = true
}

# The agent loads and streams into the server: let its address in.
resource "azurerm_postgresql_flexible_server_firewall_rule" "agent" {
  name             = "pgferry-agent"
  server_id        = azurerm_postgresql_flexible_server.orders.id
  start_ip_address = var.agent_ip
  end_ip_address   = var.agent_ip
}

resource "azurerm_postgresql_flexible_server_database" "orders" {
  name      = local.database
  server_id = azurerm_postgresql_flexible_server.orders.id
  charset   = "UTF8"
  collation = "en_US.utf8"
}

resource "pgferry_migration" "orders" {
  migration_id = "orders"

  source {
    host     = var.source_host
    port     = 5432
    database = local.database
    user     = var.source_user
    password = var.source_password
    ssl_mode = "require"
  }
  target {
    host     = azurerm_postgresql_flexible_server.orders.fqdn
    database = azurerm_postgresql_flexible_server_database.orders.name
    user     = local.admin_login
    password = var.target_admin_password
    ssl_mode = "require"
  }
  tables {
    include = ["public.*"]
  }
  # The objects' owners and grantees must exist on the target. Azure's admin is not a superuser and the
  # source's owner (often `postgres`) does not exist there: map it to the admin (`terraform plan` runs the
  # preflight, which names every role the target lacks, with its CREATE ROLE, before anything starts).
  roles {
    map = { (var.source_owner_role) = local.admin_login }
  }

  cutover = var.cutover
  cutover_options {
    max_lag_seconds = 5
    validation      = "checksums"
  }

  depends_on = [azurerm_postgresql_flexible_server_firewall_rule.agent]
}

# The application follows the migration.
resource "azurerm_service_plan" "orders" {
  name                = "orders-plan"
  resource_group_name = azurerm_resource_group.orders.name
  location            = azurerm_resource_group.orders.location
  os_type             = "Linux"
  sku_name            = "B1"
}

resource "azurerm_linux_web_app" "orders" {
  name                = "orders-app"
  resource_group_name = azurerm_resource_group.orders.name
  location            = azurerm_resource_group.orders.location
  service_plan_id     = azurerm_service_plan.orders.id
  https_only          = true
  site_config {
    application_stack {
      node_version = "20-lts"
    }
  }
  app_settings = {
    # The connection without its password (Terraform's state is not encrypted): the app keeps its own
    # DATABASE_PASSWORD (e.g. a Key Vault reference) and chooses by DATABASE_ENDPOINT.
    DATABASE_HOST     = pgferry_migration.orders.active_connection.host
    DATABASE_URL      = pgferry_migration.orders.active_connection.connection_string
    DATABASE_ENDPOINT = pgferry_migration.orders.active_endpoint
  }
}

output "phase" {
  value = pgferry_migration.orders.phase
}
output "lag_bytes" {
  value = pgferry_migration.orders.lag_bytes
}
output "lag_seconds" {
  value = pgferry_migration.orders.lag_seconds
}
output "retained_wal_bytes" {
  value = pgferry_migration.orders.retained_wal_bytes
}
output "active_endpoint" {
  value = pgferry_migration.orders.active_endpoint
}
output "outage_ms" {
  value = pgferry_migration.orders.outage_ms
}
output "validation_ok" {
  value = pgferry_migration.orders.validation_ok
}
output "target_host" {
  value = azurerm_postgresql_flexible_server.orders.fqdn
}
output "app_url" {
  value = "https://${azurerm_linux_web_app.orders.default_hostname}"
}
