"""Reading the user's data: text tables (and, later, image folders), splits and checks."""
