# A driver, a connection to one gateway, and a result held by the client.

setClass("SaferoomDriver", contains = "DBIDriver")

setClass("SaferoomConnection", contains = "DBIConnection",
         slots = c(user = "character", role = "character", url = "character", state = "environment"))

setClass("SaferoomResult", contains = "DBIResult",
         slots = c(connection = "SaferoomConnection", statement = "character", state = "environment"))
