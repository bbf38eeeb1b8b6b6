# A connection to a gateway: the catalog, queries, and what it says about itself.

setMethod("show", "SaferoomConnection", function(object) {
  cat("<SaferoomConnection> ", object@user, " as ", object@role, " at ", object@url,
      if (!dbIsValid(object)) " (disconnected)", "\n", sep = "")
})

setMethod("dbIsValid", "SaferoomConnection", function(dbObj, ...) isTRUE(dbObj@state$valid))

setMethod("dbDisconnect", "SaferoomConnection", function(conn, ...) {
  if (!dbIsValid(conn)) warning("the connection is already closed", call. = FALSE)
  if (isTRUE(conn@state$result$open)) warning("closing the connection closed its open result", call. = FALSE)
  conn@state$valid <- FALSE
  invisible(TRUE)
})

setMethod("dbGetInfo", "SaferoomConnection", function(dbObj, ...) {
  address <- regmatches(dbObj@url, regexec("^[a-z]+://([^/:]+):?([0-9]*)", dbObj@url))[[1]]
  list(db.version = "saferoom gateway", dbname = dbObj@url, username = dbObj@user, role = dbObj@role,
       host = address[2], port = address[3])
})

setMethod("dbDataType", "SaferoomConnection", function(dbObj, obj, ...) sr_data_type(obj))

sr_live <- function(conn) {
  if (!dbIsValid(conn)) stop("the connection is closed: open one with dbConnect(saferoom::saferoom())", call. = FALSE)
  conn@state
}

sr_role_query <- function(conn) if (!is.null(conn@state$role)) list(role = conn@state$role)

# The catalog as the caller's role sees it: a list of tables, each with its columns.
sr_catalog <- function(conn) {
  sr_request(sr_live(conn), "GET", "/v1/tables", query = sr_role_query(conn))
}

sr_table_name <- function(conn, name) {
  if (is(name, "Id")) return(paste(name@name, collapse = "."))
  if (is(name, "SQL")) return(gsub('"', "", as.character(name)))
  stopifnot(is.character(name), length(name) == 1, !is.na(name))
  name
}

setMethod("dbListTables", "SaferoomConnection", function(conn, ...) {
  vapply(sr_catalog(conn), function(table) table$name, "")
})

sr_exists <- function(conn, name, ...) sr_table_name(conn, name) %in% dbListTables(conn)
setMethod("dbExistsTable", c("SaferoomConnection", "character"), sr_exists)
setMethod("dbExistsTable", c("SaferoomConnection", "Id"), sr_exists)

sr_fields <- function(conn, name, ...) {
  wanted <- sr_table_name(conn, name)
  for (table in sr_catalog(conn)) {
    if (identical(table$name, wanted)) {
      shown <- Filter(function(column) !identical(column$action, "deny"), table$columns)
      return(vapply(shown, function(column) column$name, ""))
    }
  }
  stop("no table ", wanted, " for role ", conn@role, ": dbListTables(con) lists those it may read", call. = FALSE)
}
setMethod("dbListFields", c("SaferoomConnection", "character"), sr_fields)
setMethod("dbListFields", c("SaferoomConnection", "Id"), sr_fields)

setMethod("dbSendQuery", c("SaferoomConnection", "character"), function(conn, statement, params = NULL, ...) {
  stopifnot(length(statement) == 1, !is.na(statement))
  if (length(params)) stop("saferoom does not bind parameters: write the values into the query", call. = FALSE)
  body <- list(sql = statement, format = "vectors")
  if (!is.null(conn@state$role)) body$role <- conn@state$role
  answer <- sr_query(sr_live(conn), body)
  if (!is.null(answer$status$error)) sr_stop(answer$status$error)
  if (isTRUE(answer$status$truncated)) {
    warning(paste(c("the result was cut at the role's limit", unlist(answer$status$notices)), collapse = "; "),
            call. = FALSE)
  }
  sr_close_previous(conn)
  state <- new.env(parent = emptyenv())
  conn@state$result <- state
  state$frame <- answer$frame
  state$position <- 0L
  state$open <- TRUE
  state$status <- answer$status
  state$decision <- answer$decision
  new("SaferoomResult", connection = conn, statement = statement, state = state)
})

# One open result a connection, as DBI asks: a new query closes the one before it.
sr_close_previous <- function(conn) {
  previous <- conn@state$result
  if (!is.null(previous) && isTRUE(previous$open)) {
    warning("a new query closed the connection's open result", call. = FALSE)
    previous$open <- FALSE
    previous$frame <- NULL
  }
}
