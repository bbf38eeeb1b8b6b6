# The saferoom driver: `dbConnect(saferoom::saferoom())`.
saferoom <- function() new("SaferoomDriver")

setMethod("show", "SaferoomDriver", function(object) cat("<SaferoomDriver>\n"))

setMethod("dbIsValid", "SaferoomDriver", function(dbObj, ...) TRUE)

setMethod("dbGetInfo", "SaferoomDriver", function(dbObj, ...) {
  list(driver.version = utils::packageVersion("saferoom"), client.version = utils::packageVersion("curl"),
       max.connections = NA_integer_)
})

setMethod("dbDataType", "SaferoomDriver", function(dbObj, obj, ...) sr_data_type(obj))

sr_data_type <- function(obj) {
  if (is.data.frame(obj)) return(vapply(obj, sr_data_type, ""))
  if (inherits(obj, "POSIXct")) return("TIMESTAMP WITH TIME ZONE")
  if (inherits(obj, "Date")) return("DATE")
  if (inherits(obj, "difftime")) return("INTERVAL")
  if (is.factor(obj)) return("VARCHAR")
  if (inherits(obj, "blob") || is.list(obj)) return("BLOB")
  switch(typeof(obj), logical = "BOOLEAN", integer = "INTEGER", double = "DOUBLE", character = "VARCHAR",
         raw = "BLOB", stop("no SQL type for an object of class ", class(obj)[1], call. = FALSE))
}

# Where the URL and token come from: the arguments, then SAFEROOM_URL and SAFEROOM_TOKEN, then the file
# `saferoom login` writes.
sr_credentials_path <- function() {
  base <- Sys.getenv("XDG_CONFIG_HOME")
  if (!nzchar(base)) base <- file.path(path.expand("~"), ".config")
  file.path(base, "saferoom", "credentials.json")
}

sr_credentials <- function(url, token) {
  saved <- tryCatch(jsonlite::fromJSON(sr_credentials_path()), error = function(e) list())
  pick <- function(given, variable, key) {
    if (!is.null(given) && nzchar(given)) return(given)
    if (nzchar(Sys.getenv(variable))) return(Sys.getenv(variable))
    if (is.character(saved[[key]])) saved[[key]] else ""
  }
  list(url = sub("/+$", "", pick(url, "SAFEROOM_URL", "url")), token = pick(token, "SAFEROOM_TOKEN", "token"))
}

setMethod("dbConnect", "SaferoomDriver", function(drv, url = NULL, token = NULL, role = NULL, ...) {
  given <- sr_credentials(url, token)
  if (!nzchar(given$url)) {
    sr_stop(list(type = "UsageError", message = "no gateway URL: pass url =, set SAFEROOM_URL, or run `saferoom login`"))
  }
  if (!nzchar(given$token)) {
    sr_stop(list(type = "AuthError", message = "no token: pass token =, set SAFEROOM_TOKEN, or run `saferoom login`"))
  }
  state <- new.env(parent = emptyenv())  # the token lives here, so printing the connection cannot show it
  state$url <- given$url
  state$token <- given$token
  state$role <- role
  state$valid <- TRUE
  me <- sr_request(state, "GET", "/v1/whoami", query = if (!is.null(role)) list(role = role))
  new("SaferoomConnection", user = me$user, role = me$role, url = given$url, state = state)
})
